//! Chat formatting: Jinja chat templates (rendered with minijinja) and the built-in RWKV format.
//!
//! Python rwkvtune renders with a plain `jinja2.Template` (no `trim_blocks`/`lstrip_blocks`) and
//! strips leading newlines from the result; that is what World tokenizers get here. Templates that
//! come with a Hugging Face `tokenizer.json` were written for `transformers`, which renders with
//! `trim_blocks` and `lstrip_blocks` on, so those get the same settings. Python methods that
//! templates call on strings and dicts (`.strip()`, `.startswith()`, `.items()`, `.get()`, ...),
//! `raise_exception` and a Python-style `tojson` are provided because minijinja lacks them.

use minijinja::value::{from_args, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// One chat turn. `role` is usually `system`, `user` or `assistant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The ChatML template of Python rwkvtune's `setup_chatml_tokenizer` (spec §8.6). Rendered output
/// starts with a newline that the caller strips.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '\\n<|im_start|>' + \
    message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}{{ '\\n' }}\
    {% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Inputs of a template render besides the messages.
pub(super) struct RenderOptions<'a> {
    pub bos_token: &'a str,
    pub eos_token: &'a str,
    /// `transformers` settings (`trim_blocks`, `lstrip_blocks`) instead of plain Jinja2.
    pub hf_style: bool,
}

/// Renders `template`, then strips leading newlines as Python rwkvtune does.
pub(super) fn render_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    opts: &RenderOptions<'_>,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    env.set_trim_blocks(opts.hf_style);
    env.set_lstrip_blocks(opts.hf_style);
    env.set_unknown_method_callback(python_method);
    env.add_function(
        "raise_exception",
        |message: String| -> Result<Value, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        },
    );
    env.add_filter("tojson", tojson);
    let to_err = |e: Error| TokenizerError::ChatTemplate {
        message: e.to_string(),
    };
    // The name has no `.html` suffix, so minijinja does not auto-escape.
    let tmpl = env
        .template_from_named_str("chat_template", template)
        .map_err(to_err)?;
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => opts.bos_token,
        eos_token => opts.eos_token,
    };
    let text = tmpl.render(ctx).map_err(to_err)?;
    Ok(text.trim_start_matches('\n').to_string())
}

/// The format used when no template is configured: `System: …\n\n`, `User: …\n\n`,
/// `Assistant: …\n\n` per message (contents stripped, other roles ignored), then `Assistant:`.
pub(super) fn render_builtin(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        let prefix = match m.role.as_str() {
            "system" => "System",
            "user" => "User",
            "assistant" => "Assistant",
            _ => continue,
        };
        out.push_str(prefix);
        out.push_str(": ");
        out.push_str(m.content.trim());
        out.push_str("\n\n");
    }
    if add_generation_prompt {
        out.push_str("Assistant:");
    }
    out
}

/// The Python `str`/`dict` methods chat templates commonly call.
fn python_method(
    state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        return string_method(s, method, args);
    }
    if value.kind() == ValueKind::Map {
        match method {
            "items" => {
                let () = from_args(args)?;
                return state.apply_filter("items", std::slice::from_ref(value));
            }
            "keys" => {
                let () = from_args(args)?;
                return Ok(Value::from(value.try_iter()?.collect::<Vec<_>>()));
            }
            "values" => {
                let () = from_args(args)?;
                let values: Result<Vec<Value>, Error> =
                    value.try_iter()?.map(|k| value.get_item(&k)).collect();
                return Ok(Value::from(values?));
            }
            "get" => {
                let (key, default): (Value, Option<Value>) = from_args(args)?;
                let item = value.get_item(&key)?;
                return Ok(if item.is_undefined() {
                    default.unwrap_or(Value::from(()))
                } else {
                    item
                });
            }
            _ => {}
        }
    }
    Err(Error::from(ErrorKind::UnknownMethod))
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let strip_set = |chars: Option<&str>| {
        let chars: Option<Vec<char>> = chars.map(|c| c.chars().collect());
        move |c: char| match &chars {
            Some(set) => set.contains(&c),
            None => c.is_whitespace(),
        }
    };
    let v = match method {
        "strip" => {
            let (chars,): (Option<&str>,) = from_args(args)?;
            Value::from(s.trim_matches(strip_set(chars)))
        }
        "lstrip" => {
            let (chars,): (Option<&str>,) = from_args(args)?;
            Value::from(s.trim_start_matches(strip_set(chars)))
        }
        "rstrip" => {
            let (chars,): (Option<&str>,) = from_args(args)?;
            Value::from(s.trim_end_matches(strip_set(chars)))
        }
        "startswith" | "endswith" => {
            let (prefixes,): (Value,) = from_args(args)?;
            // Python accepts one string or a tuple of them.
            let candidates: Vec<Value> = match prefixes.as_str() {
                Some(_) => vec![prefixes.clone()],
                None => prefixes.try_iter()?.collect(),
            };
            let hit = candidates.iter().filter_map(Value::as_str).any(|p| {
                if method == "startswith" {
                    s.starts_with(p)
                } else {
                    s.ends_with(p)
                }
            });
            Value::from(hit)
        }
        "upper" => Value::from(s.to_uppercase()),
        "lower" => Value::from(s.to_lowercase()),
        "replace" => {
            let (old, new): (&str, &str) = from_args(args)?;
            Value::from(s.replace(old, new))
        }
        "split" => {
            let (sep, maxsplit): (Option<&str>, Option<i64>) = from_args(args)?;
            let limit = maxsplit.filter(|&m| m >= 0).map(|m| m as usize + 1);
            let parts: Vec<Value> = match (sep, limit) {
                (Some(sep), Some(n)) => s.splitn(n, sep).map(Value::from).collect(),
                (Some(sep), None) => s.split(sep).map(Value::from).collect(),
                (None, _) => s.split_whitespace().map(Value::from).collect(),
            };
            Value::from(parts)
        }
        _ => return Err(Error::from(ErrorKind::UnknownMethod)),
    };
    Ok(v)
}

/// `tojson` as `transformers` defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// i.e. Python's separators (`", "` and `": "`), not compact JSON.
fn tojson(value: Value, indent: Option<usize>) -> Result<String, Error> {
    let json = serde_json::to_value(&value)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(out)
}

fn write_py_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(width * level));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            for (k, item) in items.iter().enumerate() {
                if k > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            for (k, (key, item)) in map.iter().enumerate() {
                if k > 0 {
                    out.push_str(item_sep);
                }
                newline(out, level + 1);
                out.push_str(&J::String(key.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, level + 1, out);
            }
            newline(out, level);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> RenderOptions<'static> {
        RenderOptions {
            bos_token: "",
            eos_token: "\n\n",
            hf_style: false,
        }
    }

    #[test]
    fn builtin_format_strips_and_ignores_unknown_roles() {
        let msgs = [
            ChatMessage::new("system", " be brief "),
            ChatMessage::new("tool", "ignored"),
            ChatMessage::new("user", "hi\n"),
            ChatMessage::new("assistant", "hello"),
        ];
        assert_eq!(
            render_builtin(&msgs, true),
            "System: be brief\n\nUser: hi\n\nAssistant: hello\n\nAssistant:"
        );
        assert_eq!(render_builtin(&msgs[..1], false), "System: be brief\n\n");
    }

    #[test]
    fn chatml_template_renders_like_python() {
        let msgs = [
            ChatMessage::new("user", "你好"),
            ChatMessage::new("assistant", "hi"),
        ];
        let text = render_template(CHATML_TEMPLATE, &msgs, true, &plain()).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\n你好<|im_end|>\n\n<|im_start|>assistant\nhi<|im_end|>\n\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_methods_and_helpers_work() {
        let t = "{% for m in messages %}{{ m.content.strip().upper() }}|{{ m.role.startswith(('us', 'x')) and not m.role.endswith('x') }}|\
                 {{ m.get('role') }}|{{ m.get('nope', 'd') }}|{% endfor %}{{ {'a': [1, 'é']}|tojson }}";
        let msgs = [ChatMessage::new("user", "  hey ")];
        let text = render_template(t, &msgs, false, &plain()).unwrap();
        assert_eq!(text, "HEY|True|user|d|{\"a\": [1, \"é\"]}");
        let e = render_template(
            "{{ raise_exception('no system role') }}",
            &msgs,
            false,
            &plain(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("chat template:") && e.contains("no system role"),
            "{e}"
        );
        let e = render_template("{% for %}", &msgs, false, &plain())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("chat template: syntax error"), "{e}");
    }

    #[test]
    fn hf_style_trims_blocks() {
        let t = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}";
        let msgs = [ChatMessage::new("user", "a"), ChatMessage::new("user", "b")];
        let hf = RenderOptions {
            hf_style: true,
            ..plain()
        };
        assert_eq!(
            render_template(t, &msgs, false, &hf).unwrap(),
            "    a\n    b\n"
        );
        assert_eq!(
            render_template(t, &msgs, false, &plain()).unwrap(),
            "    a\n\n    b\n"
        );
    }
}
