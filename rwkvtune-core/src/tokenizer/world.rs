//! The RWKV "World" tokenizer: greedy longest match of the text's UTF-8 bytes against a byte trie.
//!
//! This reproduces `TRIE_TOKENIZER` of `rwkv` 0.8.32 exactly (see the reference cases in
//! `shared/reference/tokenizer`). There is no normalisation and no pre-splitting; every single byte
//! is a token, so encoding always makes progress and never fails.
//!
//! Layout: token bytes live in one packed buffer indexed by a dense id → span table; the trie is a
//! node arena whose children are contiguous sorted edge runs, built in one pass over the ids sorted
//! by bytes. The trie is rebuilt lazily after [`WorldTokenizer::add_special_token`] so that adding
//! many tokens costs one rebuild, not one per token.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::vocab::{self, parse_vocab, span_bytes, Span, MAX_ID};
use super::TokenizerError;

/// The vocabulary every RWKV World model uses (Apache-2.0, © Bo Peng; see
/// `assets/NOTICE-rwkv-vocab.md`). Embedded so that binaries need no data files at run time.
pub static BUILTIN_VOCAB: &[u8] = include_bytes!("../../assets/rwkv_vocab_v20230424.txt");

/// File name of the embedded vocabulary, as the Python package ships it.
pub(super) const BUILTIN_VOCAB_NAME: &str = "rwkv_vocab_v20230424.txt";

const NO_ID: u32 = u32::MAX;

/// Greedy longest-match byte-trie tokenizer over an RWKV vocabulary file.
#[derive(Clone)]
pub struct WorldTokenizer {
    /// Token bytes of all ids, packed.
    data: Vec<u8>,
    /// Dense id → span of `data`; [`Span::NONE`] for ids without a token.
    spans: Vec<Span>,
    /// The vocabulary file exactly as loaded, without tokens added later; `save_pretrained` writes
    /// it back verbatim so a saved hub matches the original file byte for byte.
    source: Cow<'static, [u8]>,
    origin: PathBuf,
    /// Tokens added with `add_special_token`, in order, as they are mapped now.
    added: Vec<(String, u32)>,
    /// Built on demand; reset by mutation. `Arc` keeps clones of a loaded tokenizer cheap.
    trie: OnceLock<Arc<Trie>>,
}

impl std::fmt::Debug for WorldTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorldTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size())
            .field("added", &self.added)
            .finish_non_exhaustive()
    }
}

impl WorldTokenizer {
    /// The embedded `rwkv_vocab_v20230424.txt` tokenizer, parsed once per process.
    pub fn builtin() -> &'static WorldTokenizer {
        static BUILTIN: OnceLock<WorldTokenizer> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            let origin = PathBuf::from(format!("<built-in {BUILTIN_VOCAB_NAME}>"));
            // The embedded file is covered by the reference tests; failing here is a build defect.
            Self::from_source(Cow::Borrowed(BUILTIN_VOCAB), origin)
                .unwrap_or_else(|e| panic!("embedded vocabulary is corrupt: {e}"))
        })
    }

    /// Loads a vocabulary file (LF or CRLF line endings).
    pub fn from_vocab_file(path: &Path) -> Result<Self, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|e| TokenizerError::io(path, e))?;
        Self::from_source(Cow::Owned(bytes), path.to_path_buf())
    }

    /// Parses vocabulary file contents; `origin` names the file in error messages.
    pub fn from_vocab_bytes(bytes: &[u8], origin: &Path) -> Result<Self, TokenizerError> {
        Self::from_source(Cow::Owned(bytes.to_vec()), origin.to_path_buf())
    }

    fn from_source(source: Cow<'static, [u8]>, origin: PathBuf) -> Result<Self, TokenizerError> {
        let parsed = parse_vocab(&source, &origin)?;
        let trie = Trie::build(&parsed.data, &parsed.spans, &parsed.sorted_ids);
        Ok(WorldTokenizer {
            data: parsed.data,
            spans: parsed.spans,
            source,
            origin,
            added: Vec::new(),
            trie: OnceLock::from(Arc::new(trie)),
        })
    }

    fn trie(&self) -> &Trie {
        self.trie.get_or_init(|| {
            let sorted = vocab::sort_ids_by_bytes(&self.data, &self.spans);
            Arc::new(Trie::build(&self.data, &self.spans, &sorted))
        })
    }

    /// Encodes the UTF-8 bytes of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_bytes(text.as_bytes())
    }

    /// Greedy longest match over arbitrary bytes. A byte whose single-byte token was taken away by
    /// [`add_special_token`](Self::add_special_token) with an explicit id cannot be encoded and is
    /// skipped; vocabulary files are checked to cover every byte, so this needs such a remapping.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let trie = self.trie();
        // Most tokens are 3-5 bytes; reserving for that avoids regrowth on long texts.
        let mut out = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut pos = 0;
        while pos < bytes.len() {
            match trie.longest_match(&bytes[pos..]) {
                Some((id, len)) => {
                    out.push(id);
                    pos += len;
                }
                None => pos += 1,
            }
        }
        out
    }

    /// The official decode rule: concatenate the token bytes and decode them as strict UTF-8; on
    /// invalid UTF-8 **or** an unknown id the whole result is the single character U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self.decode_bytes(ids) {
            Ok(bytes) => String::from_utf8(bytes).unwrap_or_else(|_| "\u{FFFD}".to_string()),
            Err(_) => "\u{FFFD}".to_string(),
        }
    }

    /// Concatenated token bytes; an id without a token is an error.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let bytes = self
                .token_bytes(id)
                .ok_or_else(|| self.unknown_id_error(id))?;
            out.extend_from_slice(bytes);
        }
        Ok(out)
    }

    /// Lenient decode for streaming and logs: ids without a token are skipped and invalid UTF-8
    /// becomes U+FFFD per bad sequence (`String::from_utf8_lossy`), so partial characters at the
    /// end of a stream show up as U+FFFD instead of hiding the whole text.
    pub fn decode_lossy(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(b) = self.token_bytes(id) {
                bytes.extend_from_slice(b);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The bytes of token `id`, if it exists.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let span = *self.spans.get(id as usize)?;
        span.is_some().then(|| span_bytes(&self.data, span))
    }

    /// The id whose token is exactly `bytes`.
    pub fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        self.trie().exact(bytes)
    }

    /// Maximum id + 1 (65530 for the built-in vocabulary; id 0 has no token).
    pub fn vocab_size(&self) -> usize {
        self.spans.len()
    }

    /// Where the vocabulary came from (a path, or `<built-in …>`).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// The vocabulary file as loaded, without tokens added by
    /// [`add_special_token`](Self::add_special_token).
    pub fn vocab_file_bytes(&self) -> &[u8] {
        &self.source
    }

    /// Tokens added by [`add_special_token`](Self::add_special_token) with their current ids.
    pub fn added_tokens(&self) -> &[(String, u32)] {
        &self.added
    }

    /// Adds `token` as one atomic vocabulary entry, found by the same greedy longest match as every
    /// other token (so `<|im_end|>` encodes to one id, never to its pieces). Returns its id.
    ///
    /// - `id == None`: a token already in the vocabulary keeps its id; otherwise it gets
    ///   `vocab_size()` (which then grows by one).
    /// - `id == Some(n)`: forces `token ↔ n`, dropping whatever `n` meant before and the token's
    ///   previous id, as Python's `add_special_token_with_id` does. Ids above 16 777 215 are clamped
    ///   to a new id instead, because the id table is dense.
    ///
    /// An empty token cannot be matched; it is given an id that only decodes (to "").
    pub fn add_special_token(&mut self, token: &str, id: Option<u32>) -> u32 {
        let bytes = token.as_bytes();
        let existing = self.find_exact(bytes);
        if let Some(old) = existing {
            if id.is_none_or(|n| n == old) {
                self.record_added(token, old);
                return old;
            }
        }
        let id = match id {
            Some(n) if n <= MAX_ID => n,
            _ => self.spans.len() as u32,
        };
        if let Some(old) = existing {
            self.spans[old as usize] = Span::NONE;
        }
        if id as usize >= self.spans.len() {
            self.spans.resize(id as usize + 1, Span::NONE);
        }
        self.spans[id as usize] = Span {
            start: self.data.len() as u32,
            len: bytes.len() as u32,
        };
        self.data.extend_from_slice(bytes);
        self.trie = OnceLock::new();
        self.record_added(token, id);
        id
    }

    /// Exact lookup that also works while the trie is stale (linear scan only then).
    fn find_exact(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.is_empty() {
            return None;
        }
        match self.trie.get() {
            Some(trie) => trie.exact(bytes),
            None => (0..self.spans.len() as u32).find(|&id| self.token_bytes(id) == Some(bytes)),
        }
    }

    fn record_added(&mut self, token: &str, id: u32) {
        // Re-adding keeps the original position, so saved configs list tokens in creation order.
        if self.added.iter().any(|(t, i)| t == token && *i == id) {
            return;
        }
        self.added.retain(|(t, i)| t != token && *i != id);
        self.added.push((token.to_string(), id));
    }

    pub(super) fn unknown_id_error(&self, id: u32) -> TokenizerError {
        let mut known = (0..self.spans.len() as u32).filter(|&i| self.spans[i as usize].is_some());
        let min = known.next().unwrap_or(0);
        let max = known.next_back().unwrap_or(min);
        TokenizerError::UnknownTokenId { id, min, max }
    }
}

#[derive(Clone, Copy)]
struct Node {
    id: u32,
    first_edge: u32,
    n_edges: u32,
}

/// Byte trie: node 0 is the root; the children of a node are the edges
/// `first_edge..first_edge + n_edges`, sorted by byte.
struct Trie {
    nodes: Vec<Node>,
    edge_bytes: Vec<u8>,
    edge_targets: Vec<u32>,
    /// Direct child lookup for the root, which has (almost) all 256 children.
    root: [u32; 256],
}

impl Trie {
    /// Builds the trie from ids sorted by token bytes: the tokens below a node form a contiguous
    /// run of `sorted`, so each node's children can be allocated as one contiguous edge block.
    /// Iterative so that a very long special token cannot overflow the stack.
    fn build(data: &[u8], spans: &[Span], sorted: &[u32]) -> Trie {
        let token = |k: usize| span_bytes(data, spans[sorted[k] as usize]);
        let mut trie = Trie {
            nodes: Vec::with_capacity(sorted.len() * 3),
            edge_bytes: Vec::with_capacity(sorted.len() * 3),
            edge_targets: Vec::with_capacity(sorted.len() * 3),
            root: [NO_ID; 256],
        };
        trie.nodes.push(Node {
            id: NO_ID,
            first_edge: 0,
            n_edges: 0,
        });
        // (node, range of `sorted`, depth)
        let mut work: Vec<(u32, usize, usize, usize)> = vec![(0, 0, sorted.len(), 0)];
        while let Some((node, mut lo, hi, depth)) = work.pop() {
            // Empty tokens never reach the trie (they cannot be matched), so skip them at the root.
            while lo < hi && token(lo).len() == depth {
                if depth > 0 {
                    trie.nodes[node as usize].id = sorted[lo];
                }
                lo += 1;
            }
            let first_edge = trie.edge_bytes.len() as u32;
            let mut start = lo;
            while start < hi {
                let byte = token(start)[depth];
                let mut end = start + 1;
                while end < hi && token(end)[depth] == byte {
                    end += 1;
                }
                let child = trie.nodes.len() as u32;
                trie.nodes.push(Node {
                    id: NO_ID,
                    first_edge: 0,
                    n_edges: 0,
                });
                trie.edge_bytes.push(byte);
                trie.edge_targets.push(child);
                work.push((child, start, end, depth + 1));
                start = end;
            }
            let n = &mut trie.nodes[node as usize];
            n.first_edge = first_edge;
            n.n_edges = trie.edge_bytes.len() as u32 - first_edge;
        }
        let root = trie.nodes[0];
        for e in root.first_edge..root.first_edge + root.n_edges {
            trie.root[trie.edge_bytes[e as usize] as usize] = trie.edge_targets[e as usize];
        }
        trie
    }

    #[inline]
    fn child(&self, node: u32, byte: u8) -> Option<u32> {
        if node == 0 {
            let c = self.root[byte as usize];
            return (c != NO_ID).then_some(c);
        }
        let n = self.nodes[node as usize];
        let lo = n.first_edge as usize;
        let keys = &self.edge_bytes[lo..lo + n.n_edges as usize];
        let k = if keys.len() <= 8 {
            keys.iter().position(|&b| b == byte)?
        } else {
            keys.binary_search(&byte).ok()?
        };
        Some(self.edge_targets[lo + k])
    }

    /// The longest token that is a prefix of `bytes`: (id, length in bytes).
    #[inline]
    fn longest_match(&self, bytes: &[u8]) -> Option<(u32, usize)> {
        let mut node = 0;
        let mut best = None;
        for (i, &b) in bytes.iter().enumerate() {
            match self.child(node, b) {
                Some(c) => node = c,
                None => break,
            }
            let id = self.nodes[node as usize].id;
            if id != NO_ID {
                best = Some((id, i + 1));
            }
        }
        best
    }

    fn exact(&self, bytes: &[u8]) -> Option<u32> {
        let mut node = 0;
        for &b in bytes {
            node = self.child(node, b)?;
        }
        let id = self.nodes[node as usize].id;
        (id != NO_ID && !bytes.is_empty()).then_some(id)
    }
}
