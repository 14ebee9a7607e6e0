//! Reader and writer for PyTorch `torch.save` zip checkpoints (`.pth`), without libtorch.
//!
//! Official RWKV checkpoints are `.pth` files, and libtorch's own loaders reject the
//! `state_dict()` pickles they contain (`spec/libtorch-notes.md` §2.1), so the archive is decoded
//! here: a small pickle VM that understands what `torch.save` emits, plus the zip entries
//! `<dir>/data/<key>` holding raw storage bytes. Everything meets at [`RawTensor`], which keeps
//! this module free of libtorch and testable on its own.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Cursor, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use zip::write::FileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use super::raw::{Dtype, RawTensor};

/// Everything that can go wrong with a `.pth` file; each message names the file and a way out.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    #[error("{}: I/O error: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{}: not a PyTorch zip checkpoint (legacy torch.save format?): re-save it with \
         torch.save(..., _use_new_zipfile_serialization=True) or convert it to safetensors",
        path.display()
    )]
    NotZip { path: PathBuf },
    #[error("{}: damaged or truncated zip archive ({reason}): copy the file again", path.display())]
    BadZip { path: PathBuf, reason: String },
    #[error(
        "{}: no `<dir>/data.pkl` in the zip, so torch.save did not write it (TorchScript \
         archives are not supported): save the state_dict with torch.save",
        path.display()
    )]
    MissingPickle { path: PathBuf },
    #[error(
        "{}: unsupported pickle opcode 0x{opcode:02x} ({:?}) at offset {offset} of {entry}: only \
         torch.save pickles are supported; re-save the tensors with torch.save(state_dict)",
        path.display(), char::from(*opcode)
    )]
    UnsupportedOpcode {
        path: PathBuf,
        entry: String,
        opcode: u8,
        offset: usize,
    },
    #[error(
        "{}: malformed pickle {entry} at offset {offset}: {reason}: the file is damaged or was \
         not written by torch.save",
        path.display()
    )]
    BadPickle {
        path: PathBuf,
        entry: String,
        offset: usize,
        reason: String,
    },
    #[error(
        "{}: storage entry {entry} is missing or too short ({reason}): the checkpoint is \
         truncated or damaged; copy or download it again",
        path.display()
    )]
    Storage {
        path: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "{}: unsupported storage type {name}: convert the tensors to bf16, f16, f32, f64, an \
         integer type or bool before saving",
        path.display()
    )]
    UnsupportedStorage { path: PathBuf, name: String },
    #[error(
        "{}: not a dict of tensors: {reason}: save a plain state_dict (name -> tensor)",
        path.display()
    )]
    NotTensorDict { path: PathBuf, reason: String },
    #[error("{}: tensor {name:?}: {reason}", path.display())]
    InvalidTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// Reads a `torch.save` checkpoint; tensors come back contiguous, in the file's order.
pub fn read_pth(path: &Path) -> Result<Vec<(String, RawTensor)>, PthError> {
    let io_err = |source| PthError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut magic = Vec::new();
    File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut magic))
        .map_err(io_err)?;
    let file = File::open(path).map_err(io_err)?;
    read_archive(BufReader::with_capacity(1 << 20, file), &magic, path)
}

/// Like [`read_pth`] for a checkpoint already in memory; `origin` only labels error messages.
pub fn read_pth_bytes(bytes: &[u8], origin: &Path) -> Result<Vec<(String, RawTensor)>, PthError> {
    read_archive(Cursor::new(bytes), &bytes[..bytes.len().min(4)], origin)
}

fn read_archive<R: Read + Seek>(
    reader: R,
    magic: &[u8],
    path: &Path,
) -> Result<Vec<(String, RawTensor)>, PthError> {
    let p = || path.to_path_buf();
    let bad_zip = |e: zip::result::ZipError| PthError::BadZip {
        path: p(),
        reason: e.to_string(),
    };
    let mut zip = ZipArchive::new(reader).map_err(|e| match magic.starts_with(b"PK") {
        true => bad_zip(e),
        false => PthError::NotZip { path: p() },
    })?;
    // The shallowest `data.pkl` wins: torch puts it right under the archive folder.
    let pkl = (zip.file_names())
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .min_by_key(|n| (n.matches('/').count(), n.to_string()))
        .map(str::to_string);
    let pkl = pkl.ok_or_else(|| PthError::MissingPickle { path: p() })?;
    let dir = &pkl[..pkl.len() - "data.pkl".len()];
    let order_entry = format!("{dir}byteorder");
    // Files from before torch 1.10 have no byteorder record and are little-endian.
    let has_order = zip.file_names().any(|n| n == order_entry);
    let order = match has_order {
        true => read_entry(&mut zip, &order_entry, path)?,
        false => b"little".to_vec(),
    };
    let big_endian = match order.as_slice() {
        b"little" => false,
        b"big" => true,
        other => {
            let reason = format!("byteorder record {:?}", String::from_utf8_lossy(other));
            return Err(PthError::BadZip { path: p(), reason });
        }
    };
    let top = Vm::new(&read_entry(&mut zip, &pkl, path)?, path, &pkl).run()?;
    let refs = collect_tensors(top, path)?;

    let mut users: HashMap<&str, usize> = HashMap::new();
    refs.iter()
        .for_each(|(_, t)| *users.entry(&t.storage.key).or_default() += 1);
    let mut cache: HashMap<&str, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in &refs {
        let (key, es) = (t.storage.key.as_str(), t.dtype.size());
        if !cache.contains_key(key) {
            let entry = format!("{dir}data/{key}");
            let mut bytes = read_entry(&mut zip, &entry, path)?;
            match t.storage.numel.checked_mul(t.storage.dtype.size()) {
                Some(need) if need <= bytes.len() => bytes.truncate(need),
                _ => {
                    let (n, dt) = (t.storage.numel, t.storage.dtype);
                    let reason = format!("{} bytes for {n} {dt:?} elements", bytes.len());
                    return Err(PthError::Storage {
                        path: p(),
                        entry,
                        reason,
                    });
                }
            }
            cache.insert(key, bytes);
        }
        let bytes = cache.get(key).map_or(&[][..], |b| b.as_slice());
        let numel = check_view(t, bytes.len(), name, path)?;
        let left = users.get_mut(key).map_or(0, |n| {
            *n -= 1;
            *n
        });
        let mut data = if left == 0 && t.offset == 0 && numel > 0 && is_contiguous(t) {
            // The usual case: the tensor is its whole storage, so hand over the buffer.
            let mut bytes = cache.remove(key).unwrap_or_default();
            bytes.truncate(numel * es);
            bytes
        } else {
            gather(t, numel, bytes)
        };
        if left == 0 {
            cache.remove(key);
        }
        if big_endian {
            data.chunks_exact_mut(es).for_each(|c| c.reverse());
        }
        out.push((
            name.clone(),
            RawTensor {
                dtype: t.dtype,
                shape: t.size.clone(),
                data,
            },
        ));
    }
    Ok(out)
}

fn read_entry<R: Read + Seek>(
    zip: &mut ZipArchive<R>,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>, PthError> {
    let err = |e: &dyn std::fmt::Display| {
        let (path, entry) = (path.to_path_buf(), name.to_string());
        PthError::Storage {
            path,
            entry,
            reason: e.to_string(),
        }
    };
    let mut file = zip.by_name(name).map_err(|e| err(&e))?;
    let mut buf = Vec::with_capacity(usize::try_from(file.size()).unwrap_or(0).min(1 << 30));
    file.read_to_end(&mut buf).map_err(|e| err(&e))?;
    Ok(buf)
}

/// A storage as named by a pickle persistent id; `dtype` is the element type of its bytes.
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    dtype: Dtype,
    numel: usize,
}

/// `_rebuild_tensor_v2` arguments; offset and strides count elements of `dtype`.
#[derive(Debug)]
struct TensorRef {
    storage: StorageRef,
    dtype: Dtype,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// The Python objects the VM models. Containers are shared, as in Python, because the memo
/// holds references and a dict may be filled after it was memoised.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Str(String),
    /// None, bool, float or bytes: never part of a tensor, so only their presence matters.
    Scalar,
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// A class or function named by GLOBAL, as `module.name`.
    Global(String),
    Storage(StorageRef),
    Tensor(Rc<TensorRef>),
    /// What calling a global we do not model returned; an error only where a tensor may be.
    Opaque(String),
}

impl Value {
    fn describe(&self) -> String {
        match self {
            Value::Global(g) => format!("the global {g}"),
            Value::Opaque(g) => format!("an object built by {g}"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Tuple(_) | Value::List(_) => "a sequence".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Storage(_) | Value::Tensor(_) => "a storage or tensor".into(),
            Value::Scalar => "None, a bool, float or bytes".into(),
        }
    }
}

fn new_dict() -> Value {
    Value::Dict(Rc::new(RefCell::new(Vec::new())))
}

/// Decodes pickle text; BINSTRING is a Python 2 str, so non-UTF-8 bytes are taken as Latin-1.
fn text(b: &[u8]) -> Value {
    let latin1 = || b.iter().map(|&c| char::from(c)).collect();
    Value::Str(std::str::from_utf8(b).map_or_else(|_| latin1(), str::to_string))
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    path: &'a Path,
    entry: &'a str,
}

type Step = Result<Option<Value>, PthError>;

impl<'a> Vm<'a> {
    fn new(data: &'a [u8], path: &'a Path, entry: &'a str) -> Self {
        let (stack, marks, memo) = (Vec::new(), Vec::new(), HashMap::new());
        Vm {
            data,
            pos: 0,
            op_pos: 0,
            stack,
            marks,
            memo,
            path,
            entry,
        }
    }

    fn bad(&self, reason: impl Into<String>) -> PthError {
        let (path, entry, offset) = (self.path.to_path_buf(), self.entry.to_string(), self.op_pos);
        PthError::BadPickle {
            path,
            entry,
            offset,
            reason: reason.into(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], PthError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.bad("unexpected end of pickle data"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// An unsigned little-endian integer of `width` bytes (opcode arguments).
    fn uint(&mut self, width: usize) -> Result<u64, PthError> {
        Ok(self
            .take(width)?
            .iter()
            .rev()
            .fold(0, |a, &b| a << 8 | b as u64))
    }

    /// A byte string preceded by its `width`-byte length.
    fn sized(&mut self, width: usize) -> Result<&'a [u8], PthError> {
        let n = self.uint(width)?;
        self.take(usize::try_from(n).map_err(|_| self.bad("length too large"))?)
    }

    /// LONG1/LONG4: little-endian two's complement after a `width`-byte length.
    fn long(&mut self, width: usize) -> Step {
        let b = self.sized(width)?;
        let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
            0xff
        } else {
            0
        };
        let (mut a, n) = ([fill; 8], b.len().min(8));
        a[..n].copy_from_slice(&b[..n]);
        if b[n..].iter().any(|&x| x != fill) {
            return Err(self.bad("integer does not fit in 64 bits"));
        }
        Ok(Some(Value::Int(i64::from_le_bytes(a))))
    }

    fn line(&mut self) -> Result<String, PthError> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n');
        let n = n.ok_or_else(|| self.bad("unterminated GLOBAL name"))?;
        self.pos += n + 1;
        Ok(String::from_utf8_lossy(&rest[..n]).into_owned())
    }

    fn pop(&mut self) -> Result<Value, PthError> {
        if self.marks.last().is_some_and(|&m| self.stack.len() <= m) {
            return Err(self.bad("stack underflow below MARK"));
        }
        self.stack.pop().ok_or_else(|| self.bad("stack underflow"))
    }

    /// The top `n` values, or everything above the last MARK when `n` is `None`.
    fn tail(&mut self, n: Option<usize>) -> Result<Vec<Value>, PthError> {
        let floor = self.marks.last().copied().unwrap_or(0);
        let at = match n {
            Some(n) => self.stack.len().checked_sub(n).filter(|&at| at >= floor),
            None => self.marks.pop().filter(|&m| m <= self.stack.len()),
        };
        Ok(self
            .stack
            .split_off(at.ok_or_else(|| self.bad("stack underflow or missing MARK"))?))
    }

    fn top(&self) -> Result<&Value, PthError> {
        self.stack.last().ok_or_else(|| self.bad("stack underflow"))
    }

    fn pop_str(&mut self) -> Result<String, PthError> {
        match self.pop()? {
            Value::Str(s) => Ok(s),
            v => Err(self.bad(format!("expected a string, found {}", v.describe()))),
        }
    }

    fn set_items(&mut self, n: Option<usize>) -> Step {
        let items = self.tail(n)?;
        if items.len() % 2 != 0 {
            return Err(self.bad("odd number of items for SETITEMS"));
        }
        match self.top()? {
            Value::Dict(d) => d
                .borrow_mut()
                .extend(items.chunks(2).map(|kv| (kv[0].clone(), kv[1].clone()))),
            Value::Opaque(_) => {} // e.g. a defaultdict we do not model: its items never matter
            v => return Err(self.bad(format!("SETITEM on {}", v.describe()))),
        }
        Ok(None)
    }

    fn append(&mut self, n: Option<usize>) -> Step {
        let items = self.tail(n)?;
        match self.top()? {
            Value::List(l) => l.borrow_mut().extend(items),
            Value::Opaque(_) => {}
            v => return Err(self.bad(format!("APPEND on {}", v.describe()))),
        }
        Ok(None)
    }

    /// BINPUT / LONG_BINPUT (index of `width` bytes) and MEMOIZE (`width` 0: next index).
    fn put(&mut self, width: usize) -> Step {
        let idx = if width == 0 {
            self.memo.len() as u64
        } else {
            self.uint(width)?
        };
        let v = self.top()?.clone();
        self.memo.insert(idx, v);
        Ok(None)
    }

    fn get(&mut self, width: usize) -> Step {
        let idx = self.uint(width)?;
        let v = self.memo.get(&idx).cloned();
        Ok(Some(v.ok_or_else(|| {
            self.bad(format!("memo entry {idx} is undefined"))
        })?))
    }

    fn run(mut self) -> Result<Value, PthError> {
        loop {
            self.op_pos = self.pos;
            let op = self.take(1)?[0];
            let pushed = match op {
                0x80 => self.take(1).map(|_| None)?, // PROTO
                0x95 => self.take(8).map(|_| None)?, // FRAME: only a read-ahead hint
                b'.' => return self.pop(),           // STOP
                b'c' => Some(Value::Global(format!("{}.{}", self.line()?, self.line()?))),
                0x93 => {
                    let name = self.pop_str()?; // STACK_GLOBAL
                    Some(Value::Global(format!("{}.{name}", self.pop_str()?)))
                }
                0x8c | b'U' => Some(text(self.sized(1)?)), // SHORT_BINUNICODE, SHORT_BINSTRING
                b'X' | b'T' => Some(text(self.sized(4)?)), // BINUNICODE, BINSTRING
                0x8d => Some(text(self.sized(8)?)),        // BINUNICODE8
                b'C' => self.sized(1).map(|_| Some(Value::Scalar))?, // SHORT_BINBYTES
                b'B' => self.sized(4).map(|_| Some(Value::Scalar))?, // BINBYTES
                0x8e => self.sized(8).map(|_| Some(Value::Scalar))?, // BINBYTES8
                b'J' => Some(Value::Int(self.uint(4)? as u32 as i32 as i64)), // BININT
                b'K' => Some(Value::Int(self.uint(1)? as i64)), // BININT1
                b'M' => Some(Value::Int(self.uint(2)? as i64)), // BININT2
                0x8a => self.long(1)?,                     // LONG1
                0x8b => self.long(4)?,                     // LONG4
                b'N' | 0x88 | 0x89 => Some(Value::Scalar), // NONE, NEWTRUE, NEWFALSE
                b'G' => self.take(8).map(|_| Some(Value::Scalar))?, // BINFLOAT
                b'}' => Some(new_dict()),
                b']' => Some(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b')' => Some(Value::Tuple(Rc::new(Vec::new()))),
                b't' => Some(Value::Tuple(Rc::new(self.tail(None)?))),
                0x85..=0x87 => Some(Value::Tuple(Rc::new(
                    self.tail(Some((op - 0x84) as usize))?,
                ))),
                b'(' => {
                    self.marks.push(self.stack.len());
                    None
                }
                b'a' => self.append(Some(1))?,
                b'e' => self.append(None)?,
                b's' => self.set_items(Some(2))?,
                b'u' => self.set_items(None)?,
                b'q' => self.put(1)?,
                b'r' => self.put(4)?,
                0x94 => self.put(0)?,
                b'h' => self.get(1)?,
                b'j' => self.get(4)?,
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID
                    Some(self.persistent_load(pid)?)
                }
                b'R' | 0x81 => {
                    let args = self.pop()?; // REDUCE, NEWOBJ
                    let f = self.pop()?;
                    Some(self.call(f, args)?)
                }
                b'b' => self.pop().map(|_| None)?, // BUILD: state such as `_metadata` has no tensors
                b'0' if self.marks.last().is_some_and(|&m| m == self.stack.len()) => {
                    self.tail(None).map(|_| None)? // POP of a bare MARK
                }
                b'0' => self.pop().map(|_| None)?,
                b'1' => self.tail(None).map(|_| None)?, // POP_MARK
                b'2' => Some(self.top()?.clone()),      // DUP
                _ => {
                    let (path, entry, offset) = (self.path.into(), self.entry.into(), self.op_pos);
                    return Err(PthError::UnsupportedOpcode {
                        path,
                        entry,
                        opcode: op,
                        offset,
                    });
                }
            };
            self.stack.extend(pushed);
        }
    }

    fn persistent_load(&self, pid: Value) -> Result<Value, PthError> {
        let Value::Tuple(t) = &pid else {
            return Err(self.bad(format!("persistent id is {}, not a tuple", pid.describe())));
        };
        let [Value::Str(kind), Value::Global(ty), key, _location, Value::Int(numel), ..] = &t[..]
        else {
            return Err(self.bad("persistent id is not (\"storage\", type, key, location, numel)"));
        };
        if kind != "storage" {
            return Err(self.bad(format!("persistent id of kind {kind:?}")));
        }
        let unsupported = || PthError::UnsupportedStorage {
            path: self.path.into(),
            name: ty.clone(),
        };
        let dtype = dtype_of(ty).ok_or_else(unsupported)?;
        let key = match key {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            v => return Err(self.bad(format!("storage key is {}", v.describe()))),
        };
        let numel = usize::try_from(*numel).map_err(|_| self.bad("negative storage size"))?;
        Ok(Value::Storage(StorageRef { key, dtype, numel }))
    }

    fn call(&self, f: Value, args: Value) -> Result<Value, PthError> {
        let Value::Global(name) = f else {
            return Ok(Value::Opaque(format!("a call of {}", f.describe())));
        };
        let Value::Tuple(args) = args else {
            return Err(self.bad(format!("arguments of {name} are not a tuple")));
        };
        match (name.as_str(), &args[..]) {
            ("collections.OrderedDict" | "builtins.dict" | "__builtin__.dict", []) => {
                Ok(new_dict())
            }
            ("collections.defaultdict", _) => Ok(new_dict()),
            ("_codecs.encode", _) => Ok(Value::Scalar), // bytes, as protocol 2 spells them
            ("torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor_v3", _) => {
                self.rebuild_tensor(&args)
            }
            ("torch._utils._rebuild_parameter", [t, ..]) => Ok(t.clone()),
            ("torch._utils._rebuild_parameter_with_state", [t, ..]) => Ok(t.clone()),
            ("torch._tensor._rebuild_from_type_v2", [func, _, inner, ..]) => {
                self.call(func.clone(), inner.clone())
            }
            _ => Ok(Value::Opaque(name)),
        }
    }

    fn rebuild_tensor(&self, args: &[Value]) -> Result<Value, PthError> {
        let usize_of = |v: &Value| match v {
            Value::Int(i) => {
                usize::try_from(*i).map_err(|_| self.bad(format!("negative size {i}")))
            }
            v => Err(self.bad(format!("tensor geometry holds {}", v.describe()))),
        };
        let dims = |v: &Value| match v {
            Value::Tuple(t) => t.iter().map(usize_of).collect::<Result<Vec<_>, _>>(),
            v => Err(self.bad(format!("tensor size or stride is {}", v.describe()))),
        };
        let [Value::Storage(storage), offset, size, stride, rest @ ..] = args else {
            return Err(self.bad("_rebuild_tensor needs (storage, offset, size, stride, ...)"));
        };
        // `_rebuild_tensor_v3` views untyped bytes as the dtype that follows the hooks.
        let dtype = match rest.get(2) {
            Some(Value::Global(g)) => dtype_of(g).ok_or_else(|| PthError::UnsupportedStorage {
                path: self.path.into(),
                name: g.clone(),
            })?,
            _ => storage.dtype,
        };
        let (size, stride, offset) = (dims(size)?, dims(stride)?, usize_of(offset)?);
        if size.len() != stride.len() {
            return Err(self.bad(format!(
                "size {size:?} and stride {stride:?} differ in rank"
            )));
        }
        let storage = storage.clone();
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage,
            dtype,
            offset,
            size,
            stride,
        })))
    }
}

/// Maps a storage class (`torch.BFloat16Storage`) or dtype (`torch.bfloat16`) to its element type.
fn dtype_of(global: &str) -> Option<Dtype> {
    let name = global.strip_prefix("torch.")?;
    let name = name
        .strip_prefix("cuda.")
        .or_else(|| name.strip_prefix("storage."))
        .unwrap_or(name);
    Some(match name {
        "BFloat16Storage" | "bfloat16" => Dtype::BF16,
        "HalfStorage" | "float16" | "half" => Dtype::F16,
        "FloatStorage" | "float32" | "float" => Dtype::F32,
        "DoubleStorage" | "float64" | "double" => Dtype::F64,
        "LongStorage" | "int64" | "long" => Dtype::I64,
        "IntStorage" | "int32" | "int" => Dtype::I32,
        "ShortStorage" | "int16" | "short" => Dtype::I16,
        "CharStorage" | "int8" => Dtype::I8,
        "ByteStorage" | "uint8" | "UntypedStorage" => Dtype::U8,
        "BoolStorage" | "bool" => Dtype::Bool,
        _ => return None,
    })
}

/// Picks the tensor dict out of the pickled object and names every tensor in it.
fn collect_tensors(top: Value, path: &Path) -> Result<Vec<(String, Rc<TensorRef>)>, PthError> {
    let not_dict = |reason: String| PthError::NotTensorDict {
        path: path.into(),
        reason,
    };
    let Value::Dict(dict) = &top else {
        return Err(not_dict(format!(
            "the pickled object is {}",
            top.describe()
        )));
    };
    // Training scripts save {"model": state_dict, "step": ..}; the weights are what we want.
    let entries = dict.borrow();
    let has_tensor = entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    let dicts: Vec<_> = entries
        .iter()
        .filter(|(_, v)| matches!(v, Value::Dict(_)))
        .collect();
    let root = match dicts[..] {
        [(Value::Str(k), inner)] if !has_tensor && (k == "model" || k == "state_dict") => inner,
        _ => &top,
    };
    let mut out = Vec::new();
    flatten(root, (String::new(), 0), &mut out, &not_dict)?;
    let mut seen = HashSet::new();
    if let Some((dup, _)) = out.iter().find(|(n, _)| !seen.insert(n.as_str())) {
        return Err(not_dict(format!(
            "two tensors flatten to the same name {dup:?}"
        )));
    }
    Ok(out)
}

fn flatten(
    v: &Value,
    (prefix, depth): (String, usize),
    out: &mut Vec<(String, Rc<TensorRef>)>,
    not_dict: &dyn Fn(String) -> PthError,
) -> Result<(), PthError> {
    // Also stops a dict that contains itself (possible through the memo).
    if depth > 32 {
        return Err(not_dict(format!(
            "nesting deeper than 32 levels at {prefix:?}"
        )));
    }
    let join = |k: &dyn std::fmt::Display| match prefix.is_empty() {
        true => (k.to_string(), depth + 1),
        false => (format!("{prefix}.{k}"), depth + 1),
    };
    let seq = |items: &[Value], out: &mut _| {
        items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| flatten(v, join(&i), out, not_dict))
    };
    match v {
        Value::Tensor(t) => out.push((prefix.clone(), t.clone())),
        Value::Dict(d) => {
            for (k, v) in d.borrow().iter() {
                let k = match k {
                    Value::Str(s) => join(s),
                    Value::Int(i) => join(i),
                    k => return Err(not_dict(format!("key {} is not a string", k.describe()))),
                };
                flatten(v, k, out, not_dict)?;
            }
        }
        Value::List(l) => seq(&l.borrow(), out)?,
        Value::Tuple(t) => seq(t, out)?,
        // torch and numpy objects we cannot decode (quantized or sparse tensors, arrays) may be
        // weights, so skipping them would silently lose data; other objects (argparse
        // namespaces, sets, ...) are metadata.
        Value::Opaque(g) if g.starts_with("torch.") || g.starts_with("numpy.") => {
            return Err(not_dict(format!(
                "{prefix:?} is built by {g}, which is not supported"
            )));
        }
        _ => {} // ints, strings, dtypes and the like carry no weights
    }
    Ok(())
}

/// Checks that the view stays inside `len` storage bytes; returns its element count.
fn check_view(t: &TensorRef, len: usize, name: &str, path: &Path) -> Result<usize, PthError> {
    let err = || {
        let (o, sz, st, n) = (t.offset, &t.size, &t.stride, t.storage.numel);
        let reason = format!("view (offset {o}, size {sz:?}, stride {st:?}) lies outside");
        let reason = format!("{reason} its storage of {n} elements");
        PthError::InvalidTensor {
            path: path.into(),
            name: name.into(),
            reason,
        }
    };
    let numel = t
        .size
        .iter()
        .try_fold(1usize, |a, &s| a.checked_mul(s))
        .ok_or_else(err)?;
    // A broadcast view (stride 0) can hold more elements than its storage: bound the copy too.
    numel.checked_mul(t.dtype.size()).ok_or_else(err)?;
    if numel == 0 {
        return Ok(0);
    }
    let mut dims = t.size.iter().zip(&t.stride);
    let last = dims.try_fold(t.offset, |a, (&n, &s)| {
        a.checked_add((n - 1).checked_mul(s)?)
    });
    let end = last.and_then(|l| l.checked_add(1)?.checked_mul(t.dtype.size()));
    end.filter(|&end| end <= len).map(|_| numel).ok_or_else(err)
}

fn is_contiguous(t: &TensorRef) -> bool {
    let mut expect = 1;
    t.size.iter().zip(&t.stride).rev().all(|(&n, &s)| {
        let ok = n == 1 || s == expect;
        expect *= n;
        ok
    })
}

/// Copies a view (already checked by [`check_view`]) into a fresh row-major buffer.
fn gather(t: &TensorRef, numel: usize, bytes: &[u8]) -> Vec<u8> {
    let es = t.dtype.size();
    if numel == 0 {
        return Vec::new();
    }
    if is_contiguous(t) {
        return bytes[t.offset * es..(t.offset + numel) * es].to_vec();
    }
    let mut out = Vec::with_capacity(numel * es);
    let (mut idx, mut at) = (vec![0usize; t.size.len()], t.offset);
    for _ in 0..numel {
        out.extend_from_slice(&bytes[at * es..(at + 1) * es]);
        // Odometer step; wrapping because the final carry briefly steps past the view.
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            at = at.wrapping_add(t.stride[d]);
            if idx[d] < t.size[d] {
                break;
            }
            at = at.wrapping_sub(t.stride[d].wrapping_mul(t.size[d]));
            idx[d] = 0;
        }
    }
    out
}

/// Writes `tensors` as `torch.save(OrderedDict(tensors), path)` would, via a temporary file
/// that is renamed into place, so `path` never holds a half-written checkpoint.
pub fn write_pth(path: &Path, tensors: &[(String, RawTensor)]) -> Result<(), PthError> {
    let mut names = HashSet::new();
    for (name, t) in tensors {
        let bad = |reason| PthError::InvalidTensor {
            path: path.into(),
            name: name.clone(),
            reason,
        };
        let need = t
            .shape
            .iter()
            .try_fold(t.dtype.size(), |a, &s| a.checked_mul(s));
        if need != Some(t.data.len()) {
            let (n, s, d) = (t.data.len(), &t.shape, t.dtype);
            return Err(bad(format!(
                "{n} data bytes do not match shape {s:?} of {d:?}"
            )));
        }
        if !names.insert(name.as_str()) {
            return Err(bad("the name occurs twice".into()));
        }
    }
    let mut p = Pickler::default();
    p.state_dict(tensors);
    let storages: Vec<&[u8]> = tensors.iter().map(|(_, t)| t.data.as_slice()).collect();
    // torch names the archive folder after the file stem; keep to characters all zip tools like.
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let safe = |c: char| {
        if c.is_ascii_alphanumeric() || "-_.".contains(c) {
            c
        } else {
            '_'
        }
    };
    let dir: String = stem.chars().map(safe).collect();
    write_zip(
        path,
        if dir.is_empty() { "archive" } else { &dir },
        &p.out,
        &storages,
    )
}

fn write_zip(path: &Path, dir: &str, pickle: &[u8], storages: &[&[u8]]) -> Result<(), PthError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let io_err = |source| PthError::Io {
        path: path.into(),
        source,
    };
    let no_name = || io_err(io::Error::new(io::ErrorKind::InvalidInput, "no file name"));
    let file_name = path.file_name().ok_or_else(no_name)?.to_string_lossy();
    let unique = format!(
        "{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = path.with_file_name(format!(".{file_name}.{unique}.tmp"));
    let result = (|| -> io::Result<()> {
        let file = File::options().write(true).create_new(true).open(&tmp)?;
        let mut zip = ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut entry = |name: String, data: &[u8]| -> io::Result<()> {
            let options = FileOptions::default()
                .compression_method(CompressionMethod::Stored)
                .last_modified_time(DateTime::default())
                .large_file(data.len() as u64 >= u32::MAX as u64);
            zip.start_file_aligned(name, options, 64)?;
            zip.write_all(data)
        };
        entry(format!("{dir}/data.pkl"), pickle)?;
        entry(format!("{dir}/.format_version"), b"1")?;
        entry(format!("{dir}/.storage_alignment"), b"64")?;
        entry(format!("{dir}/byteorder"), b"little")?;
        for (i, data) in storages.iter().enumerate() {
            entry(format!("{dir}/data/{i}"), data)?;
        }
        entry(format!("{dir}/version"), b"3\n")?;
        let file = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(e)
    })
}

/// Emits protocol-2 opcodes the way CPython's pickler does for a torch state dict.
#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    memo: HashMap<String, u32>,
}

impl Pickler {
    fn op(&mut self, op: u8) -> &mut Self {
        self.out.push(op);
        self
    }

    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }

    /// GLOBAL the first time (memoised with BINPUT/LONG_BINPUT), BINGET/LONG_BINGET after.
    fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}\n{name}\n");
        let (short, long, i) = match self.memo.get(&key) {
            Some(&i) => (b'h', b'j', i),
            None => {
                let i = self.memo.len() as u32;
                self.op(b'c').bytes(key.as_bytes()).memo.insert(key, i);
                (b'q', b'r', i)
            }
        };
        match u8::try_from(i) {
            Ok(i) => self.op(short).op(i),
            Err(_) => self.op(long).bytes(&i.to_le_bytes()),
        }
    }

    fn str(&mut self, s: &str) -> &mut Self {
        self.op(b'X')
            .bytes(&(s.len() as u32).to_le_bytes())
            .bytes(s.as_bytes())
    }

    fn int(&mut self, v: u64) -> &mut Self {
        match v {
            0..=0xff => self.op(b'K').op(v as u8),
            0x100..=0xffff => self.op(b'M').bytes(&(v as u16).to_le_bytes()),
            0x1_0000..=0x7fff_ffff => self.op(b'J').bytes(&(v as u32).to_le_bytes()),
            _ => {
                // LONG1: minimal two's complement, so keep a zero byte above a set sign bit.
                let mut b = v.to_le_bytes()[..8 - v.leading_zeros() as usize / 8].to_vec();
                if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    b.push(0);
                }
                self.op(0x8a).op(b.len() as u8).bytes(&b)
            }
        }
    }

    fn int_tuple(&mut self, v: &[usize]) -> &mut Self {
        if v.len() > 3 {
            self.op(b'(');
        }
        for &x in v {
            self.int(x as u64);
        }
        match v.len() {
            0 => self.op(b')'),
            n @ 1..=3 => self.op(0x84 + n as u8),
            _ => self.op(b't'),
        }
    }

    fn empty_ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").op(b')').op(b'R')
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    fn tensor(
        &mut self,
        key: &str,
        storage: &str,
        numel: usize,
        geometry: (usize, &[usize], &[usize]),
    ) -> &mut Self {
        let (offset, size, stride) = geometry;
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b'(')
            .op(b'(')
            .str("storage");
        self.global("torch", storage)
            .str(key)
            .str("cpu")
            .int(numel as u64)
            .op(b't')
            .op(b'Q');
        self.int(offset as u64)
            .int_tuple(size)
            .int_tuple(stride)
            .op(0x89);
        self.empty_ordered_dict().op(b't').op(b'R')
    }

    fn state_dict(&mut self, tensors: &[(String, RawTensor)]) {
        self.op(0x80).op(2).empty_ordered_dict();
        for (c, chunk) in tensors.chunks(1000).enumerate() {
            self.op(b'(');
            for (i, (name, t)) in chunk.iter().enumerate() {
                // torch's contiguous strides count a zero-sized dim as 1, so strides stay positive.
                let mut stride = vec![1usize; t.shape.len()];
                for d in (1..t.shape.len()).rev() {
                    stride[d - 1] = stride[d] * t.shape[d].max(1);
                }
                let key = (c * 1000 + i).to_string();
                let geometry = (0, &t.shape[..], &stride[..]);
                self.str(name)
                    .tensor(&key, storage_name(t.dtype), t.numel(), geometry);
            }
            self.op(b'u');
        }
        self.op(b'.');
    }
}

fn storage_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::BF16 => "BFloat16Storage",
        Dtype::F16 => "HalfStorage",
        Dtype::F32 => "FloatStorage",
        Dtype::F64 => "DoubleStorage",
        Dtype::I64 => "LongStorage",
        Dtype::I32 => "IntStorage",
        Dtype::I16 => "ShortStorage",
        Dtype::I8 => "CharStorage",
        Dtype::U8 => "ByteStorage",
        Dtype::Bool => "BoolStorage",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tensors.json` in file order (serde_json's map would sort the names).
    struct Ordered(Vec<(String, serde_json::Value)>);

    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Ordered, A::Error> {
                    let mut v = Vec::new();
                    while let Some(e) = m.next_entry()? {
                        v.push(e);
                    }
                    Ok(Ordered(v))
                }
            }
            d.deserialize_map(V)
        }
    }

    #[test]
    fn reads_reference_models_in_order() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
        assert!(
            shared.is_dir(),
            "reference data missing: no shared folder at {}",
            shared.display()
        );
        for model in ["u3x96h32", "t2x128"] {
            let dir = shared.join("reference/models").join(model);
            let json = std::fs::read_to_string(dir.join("tensors.json")).expect("tensors.json");
            let expected: Ordered = serde_json::from_str(&json).expect("parse tensors.json");
            let got = read_pth(&dir.join("model.pth")).expect("read model.pth");
            assert_eq!(got.len(), expected.0.len(), "{model}: tensor count");
            for ((name, t), (ename, meta)) in got.iter().zip(&expected.0) {
                assert_eq!(name, ename, "{model}: order");
                let shape: Vec<usize> =
                    serde_json::from_value(meta["shape"].clone()).expect("shape");
                assert_eq!(
                    (&t.shape, meta["dtype"].as_str()),
                    (&shape, Some("bfloat16")),
                    "{name}"
                );
                assert_eq!(
                    (t.dtype, t.data.len()),
                    (Dtype::BF16, t.numel() * 2),
                    "{model}: {name}"
                );
            }
            // The first tensor is all of storage 0: compare with the raw zip entry.
            let bytes = std::fs::read(dir.join("model.pth")).expect("read bytes");
            let mut zip = ZipArchive::new(Cursor::new(&bytes)).expect("zip");
            let raw = read_entry(&mut zip, "model/data/0", Path::new("x")).expect("entry");
            assert!(got[0].1.data == raw && raw.iter().any(|&b| b != 0));
            assert_eq!(
                read_pth_bytes(&bytes, Path::new("m.pth")).expect("from bytes"),
                got
            );
        }
    }

    /// Every dtype, plus a 0-d scalar, empty tensors and a dim past BININT2.
    fn all_dtypes() -> Vec<(String, RawTensor)> {
        use Dtype::*;
        let dtypes = [
            BF16, F16, F32, F64, I64, I32, I16, I8, U8, Bool, F32, BF16, I64, U8,
        ];
        let shapes = [
            "3 2", "4", "2 3 1", "1", "2 2", "5", "1 7", "3", "9", "5", "", "0", "2 0 3",
        ];
        let shapes = shapes.into_iter().chain(["70000 1 1 1 2"]);
        let mut seed = 7u8;
        let mut next = || {
            seed = seed.wrapping_mul(31).wrapping_add(17);
            seed
        };
        let mut out = Vec::new();
        for (i, (dtype, shape)) in dtypes.into_iter().zip(shapes).enumerate() {
            let shape: Vec<usize> = shape.split(' ').flat_map(str::parse).collect();
            let n = shape.iter().product::<usize>() * dtype.size();
            let data = (0..n).map(|_| if dtype == Bool { next() & 1 } else { next() });
            let t = RawTensor {
                dtype,
                shape,
                data: data.collect(),
            };
            out.push((format!("t{i}.{dtype:?}"), t));
        }
        out
    }

    #[test]
    fn round_trip_every_dtype_with_torch_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("my model.pth");
        let tensors = all_dtypes();
        write_pth(&path, &tensors).expect("write");
        assert_eq!(read_pth(&path).expect("read"), tensors);
        let mut zip = ZipArchive::new(File::open(&path).expect("open")).expect("zip");
        let mut names = Vec::new();
        for i in 0..zip.len() {
            let f = zip.by_index(i).expect("entry");
            assert_eq!(f.compression(), CompressionMethod::Stored);
            assert_eq!(
                f.data_start() % 64,
                0,
                "{} is not 64-byte aligned",
                f.name()
            );
            names.push(
                f.name()
                    .strip_prefix("my_model/")
                    .expect("folder = stem")
                    .to_string(),
            );
        }
        let mut expected = vec![
            "data.pkl",
            ".format_version",
            ".storage_alignment",
            "byteorder",
        ];
        let data: Vec<String> = (0..tensors.len()).map(|i| format!("data/{i}")).collect();
        expected.extend(data.iter().map(String::as_str).chain(["version"]));
        assert_eq!(names, expected);
        assert_eq!(
            read_entry(&mut zip, "my_model/version", &path).expect("version"),
            b"3\n"
        );
        let pkl = read_entry(&mut zip, "my_model/data.pkl", &path).expect("pkl");
        assert!(
            pkl.starts_with(b"\x80\x02ccollections\nOrderedDict\nq\x00)R(") && pkl.ends_with(b"u.")
        );
        // Overwriting works and leaves no temporary file behind; an empty dict round-trips.
        write_pth(&path, &[]).expect("rewrite");
        assert!(read_pth(&path).expect("read empty").is_empty());
        let files: Vec<_> = std::fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("e").file_name())
            .collect();
        assert_eq!(files, ["my model.pth"]);
        let bad = RawTensor {
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 4],
        };
        assert!(matches!(
            write_pth(&path, &[("x".into(), bad)]),
            Err(PthError::InvalidTensor { .. })
        ));
    }

    #[test]
    fn pickler_ints_use_the_smallest_opcode() {
        let enc = |v: u64| std::mem::take(&mut Pickler::default().int(v).out);
        assert_eq!(enc(255), b"K\xff");
        assert_eq!(enc(256), b"M\x00\x01");
        assert_eq!(enc(65536), b"J\x00\x00\x01\x00");
        assert_eq!(enc(1 << 31), b"\x8a\x05\x00\x00\x00\x80\x00");
        assert_eq!(enc(1 << 32), b"\x8a\x05\x00\x00\x00\x00\x01");
        for v in [
            0,
            255,
            256,
            65535,
            65536,
            (1 << 31) - 1,
            1 << 31,
            1 << 40,
            u64::MAX >> 1,
        ] {
            let mut p = Pickler::default();
            p.op(b'(').int(v).op(b't').op(b'.');
            let got = Vm::new(&p.out, Path::new("x"), "p").run().expect("run");
            assert!(
                matches!(&got, Value::Tuple(t) if matches!(t[0], Value::Int(i) if i as u64 == v))
            );
        }
    }

    /// A pickle of `{name: tensor}` over storage "0" of six f32, as `(name, offset, size, stride)`.
    fn views_pickle(views: &[(&str, usize, &[usize], &[usize])]) -> Vec<u8> {
        let mut p = Pickler::default();
        p.op(0x80).op(2).empty_ordered_dict().op(b'(');
        for &(name, off, size, stride) in views {
            p.str(name)
                .tensor("0", "FloatStorage", 6, (off, size, stride));
        }
        std::mem::take(&mut p.op(b'u').op(b'.').out)
    }

    fn f32s(v: &RawTensor) -> Vec<f32> {
        v.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    #[test]
    fn strided_views_share_one_storage() {
        // Storage 0 holds the 2x3 matrix [[0,1,2],[3,4,5]].
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("views.pth");
        let views: [(&str, usize, &[usize], &[usize]); 5] = [
            ("m", 0, &[2, 3], &[3, 1]),
            ("t", 0, &[3, 2], &[1, 3]),
            ("row1", 3, &[3], &[1]),
            ("col2", 2, &[2], &[3]),
            ("bcast", 1, &[2, 2], &[0, 1]),
        ];
        write_zip(&path, "archive", &views_pickle(&views), &[&storage]).expect("write");
        let got: Vec<_> = read_pth(&path)
            .expect("read")
            .iter()
            .map(|(n, t)| (n.clone(), f32s(t), t.shape.clone()))
            .collect();
        assert_eq!(
            got[0],
            ("m".into(), vec![0., 1., 2., 3., 4., 5.], vec![2, 3])
        );
        assert_eq!(
            got[1],
            ("t".into(), vec![0., 3., 1., 4., 2., 5.], vec![3, 2])
        );
        assert_eq!(got[2], ("row1".into(), vec![3., 4., 5.], vec![3]));
        assert_eq!(got[3], ("col2".into(), vec![2., 5.], vec![2]));
        assert_eq!(got[4], ("bcast".into(), vec![1., 2., 1., 2.], vec![2, 2]));
        // A view reaching past the storage is rejected, naming the tensor.
        let pickle = views_pickle(&[("bad", 4, &[3], &[1])]);
        write_zip(&path, "archive", &pickle, &[&storage]).expect("write");
        let err = read_pth(&path).expect_err("out of bounds").to_string();
        assert!(err.contains("\"bad\"") && err.contains("outside"), "{err}");
        // So is a storage entry shorter than its persistent id declares, or a missing one.
        write_zip(&path, "archive", &views_pickle(&views), &[&storage[..20]]).expect("write");
        let err = read_pth(&path).expect_err("short storage").to_string();
        assert!(
            err.contains("archive/data/0") && err.contains("too short"),
            "{err}"
        );
        write_zip(&path, "archive", &views_pickle(&views), &[]).expect("write");
        assert!(matches!(read_pth(&path), Err(PthError::Storage { .. })));
    }

    #[test]
    fn unwraps_model_key_and_flattens_nested_dicts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("wrapped.pth");
        let read_names = |build: &dyn Fn(&mut Pickler)| {
            let mut p = Pickler::default();
            p.op(0x80).op(2).op(b'}').op(b'(');
            build(&mut p);
            write_zip(
                &path,
                "a",
                &p.op(b'u').op(b'.').out,
                &[&1.5f32.to_le_bytes()],
            )
            .expect("write");
            let got = read_pth(&path).expect("read");
            assert!(got.iter().all(|(_, t)| f32s(t) == [1.5]));
            got.into_iter().map(|(n, _)| n).collect::<Vec<_>>()
        };
        let dict_of = |p: &mut Pickler, name: &str| {
            p.op(b'}')
                .op(b'(')
                .str(name)
                .tensor("0", "FloatStorage", 1, (0, &[], &[]))
                .op(b'u');
        };
        let wrapped = read_names(&|p| {
            p.str("model");
            dict_of(p, "w");
            p.str("step")
                .int(3)
                .str("lr")
                .op(b'G')
                .bytes(&0.5f64.to_be_bytes());
        });
        assert_eq!(wrapped, ["w"]);
        let nested = read_names(&|p| {
            p.str("enc");
            dict_of(p, "w");
            p.str("dec");
            dict_of(p, "b");
            // An nn.Parameter, as `state_dict(keep_vars=True)` saves it.
            p.str("p")
                .global("torch._utils", "_rebuild_parameter")
                .op(b'(');
            p.tensor("0", "FloatStorage", 1, (0, &[1], &[1])).op(0x88);
            p.empty_ordered_dict().op(b't').op(b'R');
        });
        assert_eq!(nested, ["enc.w", "dec.b", "p"]);
    }

    #[test]
    fn truncated_file_is_an_error_naming_the_file() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("full.pth");
        write_pth(&path, &all_dtypes()).expect("write");
        let bytes = std::fs::read(&path).expect("read");
        let cut = tmp.path().join("cut.pth");
        for len in [0, 3, 100, bytes.len() / 2, bytes.len() - 30] {
            std::fs::write(&cut, &bytes[..len]).expect("write cut");
            let err = read_pth(&cut).expect_err("truncated").to_string();
            assert!(err.contains("cut.pth"), "{len}: {err}");
        }
    }

    #[test]
    fn garbage_legacy_and_foreign_zips_are_errors() {
        let mut x = 12345u32;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 24) as u8
            })
            .collect();
        let err = read_pth_bytes(&garbage, Path::new("junk.pth")).expect_err("garbage");
        assert!(
            err.to_string()
                .starts_with("junk.pth: not a PyTorch zip checkpoint"),
            "{err}"
        );
        let legacy = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
        let err = read_pth_bytes(legacy, Path::new("old.pth")).expect_err("legacy");
        assert!(matches!(err, PthError::NotZip { .. }) && err.to_string().contains("legacy"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("other.zip");
        let mut zip = ZipWriter::new(File::create(&path).expect("create"));
        zip.start_file("a/readme.txt", FileOptions::default())
            .expect("start");
        zip.finish().expect("finish");
        assert!(matches!(
            read_pth(&path),
            Err(PthError::MissingPickle { .. })
        ));
    }

    #[test]
    fn unsupported_globals_and_opcodes_are_errors() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("odd.pth");
        let read_err = |build: &dyn Fn(&mut Pickler)| {
            let mut p = Pickler::default();
            build(p.op(0x80).op(2));
            write_zip(&path, "archive", &p.out, &[&[0u8; 4]]).expect("write");
            read_pth(&path).expect_err("must fail")
        };
        let dict_with = |p: &mut Pickler, storage: &str| {
            p.empty_ordered_dict()
                .op(b'(')
                .str("ok")
                .tensor("0", storage, 1, (0, &[1], &[1]));
        };
        // A value built by a global we do not model, e.g. a numpy array.
        let err = read_err(&|p| {
            dict_with(p, "FloatStorage");
            p.str("arr")
                .global("numpy.core.multiarray", "_reconstruct")
                .op(b')')
                .op(b'R');
            p.op(b'u').op(b'.');
        });
        assert!(err
            .to_string()
            .contains("\"arr\" is built by numpy.core.multiarray._reconstruct"));
        let err = read_err(&|p| {
            dict_with(p, "ComplexFloatStorage");
            p.op(b'u').op(b'.');
        });
        assert!(
            matches!(&err, PthError::UnsupportedStorage { name, .. } if name == "torch.ComplexFloatStorage")
        );
        // A top object that is not a dict, like a TorchScript module.
        let err = read_err(&|p| {
            p.global("__torch__", "Net")
                .op(b')')
                .op(0x81)
                .op(b'}')
                .op(b'b')
                .op(b'.');
        });
        assert!(err.to_string().contains(
            "not a dict of tensors: the pickled object is an object built by __torch__.Net"
        ));
        // An opcode outside the supported set (INT, protocol 0), reported with its offset.
        let at = std::cell::Cell::new(0);
        let err = read_err(&|p| {
            dict_with(p, "FloatStorage");
            at.set(p.out.len());
            p.bytes(b"I1\n");
        });
        let msg = format!(
            "opcode 0x49 ('I') at offset {} of archive/data.pkl",
            at.get()
        );
        assert!(
            matches!(err, PthError::UnsupportedOpcode { opcode: b'I', .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&msg), "{err}");
    }

    /// Loads writer output with CPython's `pickle` and `zipfile` (no torch needed).
    #[test]
    fn python_stdlib_reads_writer_output() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("py.pth");
        write_pth(&path, &all_dtypes()).expect("write");
        let script = r#"
import collections, pickle, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
d = z.namelist()[0].split('/')[0]
class U(pickle.Unpickler):
    def find_class(self, mod, name):
        if (mod, name) == ('collections', 'OrderedDict'): return collections.OrderedDict
        if (mod, name) == ('torch._utils', '_rebuild_tensor_v2'): return lambda *a: a[:4]
        if mod == 'torch' and name.endswith('Storage'): return name
        raise pickle.UnpicklingError(mod + '.' + name)
    def persistent_load(self, pid):
        return (pid[1], pid[4], len(z.read(d + '/data/' + pid[2])))
sd = U(z.open(d + '/data.pkl')).load()
assert type(sd) is collections.OrderedDict
for k, (st, off, size, stride) in sd.items():
    print(k, st[0], st[1], st[2], off, list(size), list(stride))
"#;
        let Some(out) = python(script, &path.to_string_lossy()) else {
            return;
        };
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), all_dtypes().len(), "{text}");
        assert_eq!(lines[0], "t0.BF16 BFloat16Storage 6 12 0 [3, 2] [2, 1]");
        assert_eq!(lines[10], "t10.F32 FloatStorage 1 4 0 [] []");
        assert_eq!(lines[12], "t12.I64 LongStorage 0 0 0 [2, 0, 3] [3, 3, 1]");
        assert_eq!(
            lines[13],
            "t13.U8 ByteStorage 140000 140000 0 [70000, 1, 1, 1, 2] [2, 2, 2, 2, 1]"
        );
    }

    /// Runs a CPython script; `None` (a skip) only where no `python3` is installed.
    fn python(script: &str, arg: &str) -> Option<Vec<u8>> {
        let run = std::process::Command::new("python3")
            .args(["-c", script, arg])
            .output();
        let out = run
            .map_err(|e| eprintln!("python3 unavailable ({e}); skipping"))
            .ok()?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(out.stdout)
    }

    /// Reads what CPython's own pickler emits for a state dict at protocols 2 to 5 (FRAME,
    /// STACK_GLOBAL, MEMOIZE, ...), with stand-ins for the torch globals.
    #[test]
    fn reads_cpython_pickles_of_every_protocol() {
        let script = r#"
import collections, pickle, sys, types
utils = types.ModuleType('torch._utils')
sys.modules['torch'] = torch = types.ModuleType('torch')
sys.modules['torch._utils'] = torch._utils = utils
def _rebuild_tensor_v2(*a): pass
class FloatStorage: pass
_rebuild_tensor_v2.__module__, FloatStorage.__module__ = 'torch._utils', 'torch'
utils._rebuild_tensor_v2, torch.FloatStorage = _rebuild_tensor_v2, FloatStorage
class T:
    def __init__(s, *a): s.a = a
    def __reduce__(s): return (_rebuild_tensor_v2, s.a + (False, collections.OrderedDict()))
class P(pickle.Pickler):
    def persistent_id(self, obj):
        return ('storage', FloatStorage, '0', 'cpu', 6) if obj == 'S' else None
sd = collections.OrderedDict(m=T('S', 0, (2, 3), (3, 1)), t=T('S', 0, (3, 2), (1, 3)))
sd['meta'] = {'lr': 0.5, 'on': True, 'no': None, 'big': 2**40, 'neg': -5, 'b': b'x', 's': 'é'}
sd['t_again'] = sd['t']
P(sys.stdout.buffer, protocol=int(sys.argv[1])).dump(sd)
"#;
        let storage: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("cpython.pth");
        for protocol in ["2", "3", "4", "5"] {
            let Some(pickle) = python(script, protocol) else {
                return;
            };
            write_zip(&path, "archive", &pickle, &[&storage]).expect("write");
            let got = read_pth(&path).unwrap_or_else(|e| panic!("protocol {protocol}: {e}"));
            let got: Vec<_> = got.iter().map(|(n, t)| (n.as_str(), f32s(t))).collect();
            let t = vec![0., 3., 1., 4., 2., 5.];
            let want = [
                ("m", vec![0., 1., 2., 3., 4., 5.]),
                ("t", t.clone()),
                ("t_again", t),
            ];
            assert_eq!(got, want, "protocol {protocol}");
        }
    }
}
