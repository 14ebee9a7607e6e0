//! Model-hub directories and weight files.
//!
//! A hub directory holds `config.json`, `model.pth` or `model.safetensors`, and optionally the
//! tokenizer files (`tokenizer_config.json`, `vocab.txt`, chat template) and
//! `generation_config.json` — the layout of the Python rwkvtune. Weight files are read without
//! Python: `.pth` through our own pickle reader ([`pth`]), safetensors through the `safetensors`
//! crate; both meet at [`raw::RawTensor`]. Every write goes to a temporary file that is renamed
//! into place, so an interrupted save never leaves a half-written file behind.

pub mod create;
pub mod pth;
pub mod raw;
mod st;
mod tensors;

pub use create::{create_hub, CreateHubOptions};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::Rwkv7;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// On-disk weight formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// PyTorch `torch.save` zip (what official RWKV releases ship).
    Pth,
    Safetensors,
}

impl WeightFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "pth" => Ok(WeightFormat::Pth),
            "safetensors" => Ok(WeightFormat::Safetensors),
            _ => Err(Error::InvalidArgument(format!(
                "unknown weight format `{s}`: use `pth` or `safetensors`"
            ))),
        }
    }

    /// The file name used inside a hub directory.
    pub fn file_name(self) -> &'static str {
        match self {
            WeightFormat::Pth => "model.pth",
            WeightFormat::Safetensors => "model.safetensors",
        }
    }

    /// Guesses from the content (zip magic vs. safetensors header), falling back to the extension.
    pub fn detect(path: &Path) -> Result<Self> {
        use std::io::Read;
        let mut head = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let n = f.read(&mut head).map_err(|e| Error::io(path, e))?;
        if n == 4 && head == *b"PK\x03\x04" {
            return Ok(WeightFormat::Pth);
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => Ok(WeightFormat::Safetensors),
            Some("pth" | "pt" | "bin") => Ok(WeightFormat::Pth),
            _ if n == 4 => Ok(WeightFormat::Safetensors),
            _ => Err(Error::checkpoint(
                path,
                "file is too short to be a weight file",
            )),
        }
    }
}

/// Parses a dtype name as used on the command line and in configs.
pub fn parse_kind(s: &str) -> Result<Kind> {
    match s {
        "fp32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "fp16" | "float16" => Ok(Kind::Half),
        _ => Err(Error::InvalidArgument(format!(
            "unknown dtype `{s}`: use fp32, bf16 or fp16"
        ))),
    }
}

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|i| i.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("unknown device `{s}`: use cpu, cuda or cuda:N"))
            }),
    }
}

/// Reads every tensor of a `.pth` or `.safetensors` file, in file order.
pub fn read_weights(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let raw = match WeightFormat::detect(path)? {
        WeightFormat::Pth => pth::read_pth(path)?,
        WeightFormat::Safetensors => st::read(path)?,
    };
    raw.into_iter()
        .map(|(n, r)| Ok((n, tensors::to_tch(&r)?)))
        .collect()
}

/// Writes tensors (any device; stored as they are, dtype included) atomically.
pub fn write_weights(path: &Path, named: &[(String, Tensor)], format: WeightFormat) -> Result<()> {
    let raw: Vec<(String, raw::RawTensor)> = named
        .iter()
        .map(|(n, t)| Ok((n.clone(), tensors::from_tch(t)?)))
        .collect::<Result<_>>()?;
    match format {
        WeightFormat::Pth => Ok(pth::write_pth(path, &raw)?),
        WeightFormat::Safetensors => st::write(path, &raw),
    }
}

/// Writes `bytes` to `path` through a temporary sibling file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// Builds directory `out` atomically: `fill` writes into a hidden staging directory beside it
/// (same filesystem), which is then published with renames. With `merge_into_existing`, files go
/// into an existing `out` one rename each and other files there are kept (`--overwrite`);
/// otherwise an existing `out` is replaced whole. On any error the staging directory is removed
/// and `out` is untouched.
pub fn write_dir_atomically(
    out: &Path,
    merge_into_existing: bool,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stage = parent.join(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(&stage).map_err(|e| Error::io(&stage, e))?;
    let result = fill(&stage).and_then(|_| publish(&stage, out, merge_into_existing));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&stage);
    }
    result
}

fn publish(stage: &Path, out: &Path, merge_into_existing: bool) -> Result<()> {
    let empty = std::fs::read_dir(out)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if out.exists() && (empty || !merge_into_existing) {
        // Moved aside first, so the swap is two renames and a crash leaves one of the two whole.
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(|e| Error::io(out, e))?;
        std::fs::rename(stage, out).map_err(|e| Error::io(out, e))?;
        let _ = std::fs::remove_dir_all(&old);
        return Ok(());
    }
    if !out.exists() {
        return std::fs::rename(stage, out).map_err(|e| Error::io(out, e));
    }
    for entry in std::fs::read_dir(stage).map_err(|e| Error::io(stage, e))? {
        let entry = entry.map_err(|e| Error::io(stage, e))?;
        let dst = out.join(entry.file_name());
        std::fs::rename(entry.path(), &dst).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::remove_dir(stage).map_err(|e| Error::io(stage, e))
}

/// Whether `p` is an existing, empty directory.
pub(crate) fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

/// Writes pretty JSON atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text =
        serde_json::to_string_pretty(value).map_err(|e| Error::json(path, e.to_string()))?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Where a model's files are: its directory, the weight file, and `config.json` if present.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub weights: PathBuf,
    pub config: Option<PathBuf>,
}

const WEIGHT_NAMES: [&str; 3] = ["model.pth", "pytorch_model.pth", "model.safetensors"];

impl ModelFiles {
    /// Resolves a hub directory (first of `model.pth`, `pytorch_model.pth`, `model.safetensors`)
    /// or a weight file (its directory's `config.json` is used when there is one).
    pub fn locate(path: &Path) -> Result<ModelFiles> {
        if !path.exists() {
            return Err(Error::checkpoint(path, "no such file or directory"));
        }
        let (dir, weights) = if path.is_dir() {
            let weights = WEIGHT_NAMES
                .iter()
                .map(|n| path.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    Error::checkpoint(
                        path,
                        format!(
                            "not a model directory: none of {} found",
                            WEIGHT_NAMES.join(", ")
                        ),
                    )
                })?;
            (path.to_path_buf(), weights)
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            (dir, path.to_path_buf())
        };
        let config = Some(dir.join("config.json")).filter(|p| p.is_file());
        Ok(ModelFiles {
            dir,
            weights,
            config,
        })
    }
}

/// Loading and saving whole models, named after the Python API.
pub struct AutoModel;

impl AutoModel {
    /// Loads a model directory or weight file onto `device`, floating tensors cast to `kind`
    /// (fp32 / bf16 / fp16; the recurrent state stays fp32 regardless).
    pub fn from_pretrained(path: &Path, device: Device, kind: Kind) -> Result<Rwkv7> {
        let files = ModelFiles::locate(path)?;
        let config = files.config.as_deref().map(ModelConfig::load).transpose()?;
        let tensors = read_weights(&files.weights)?
            .into_iter()
            .map(|(n, t)| {
                let t = if t.is_floating_point() {
                    t.to_kind(kind)
                } else {
                    t
                };
                (n, t.to_device(device))
            })
            .collect();
        Rwkv7::from_tensors(tensors, config, &files.weights)
    }

    /// Writes `config.json` and the weights (in the model's dtype) into `dir`, creating it.
    pub fn save_pretrained(model: &Rwkv7, dir: &Path, format: WeightFormat) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_weights(
            &dir.join(format.file_name()),
            &model.named_tensors(),
            format,
        )?;
        write_json(&dir.join("config.json"), &model.config.to_json())
    }
}
