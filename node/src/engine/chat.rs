//! Chat templates: the Jinja template in a model's tokenizer_config.json that turns a
//! conversation into the prompt text the model was trained on, rendered as transformers'
//! `apply_chat_template(messages, add_generation_prompt=True, tokenize=False)` renders
//! it: blocks trimmed and left-stripped, `raise_exception`, a `tojson` that writes what
//! Python's `json.dumps` writes, the tokenizer's special tokens as variables, and
//! Python's string, list and dict methods (`.strip()`, `.items()`). The template comes
//! from a file a peer may have written, so rendering runs on a fuel budget.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, Value};

use super::{EngineError, Result};
use ipfs_accelerate_protocol::model_folder::{FolderError, TokenizerConfig};

/// Most template instructions one rendering may run: far above any real template on a
/// long conversation, and a bound on what a hostile one can make the node do.
const RENDER_FUEL: u64 = 50_000_000;

const TEMPLATE_NAME: &str = "chat_template";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, or whatever else the model's template knows.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may name.
#[derive(Debug)]
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... as transformers passes its special tokens map.
    special_tokens: Vec<(&'static str, String)>,
}

impl ChatTemplate {
    /// The template of a tokenizer_config.json, or `None` when it has none. A template
    /// that does not compile is an error naming the file.
    pub(crate) fn new(config: &TokenizerConfig) -> Result<Option<Self>> {
        let Some(source) = config.chat_template.clone() else {
            return Ok(None);
        };
        let mut env = Environment::new();
        // transformers: ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_fuel(Some(RENDER_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)
            .map_err(|e| FolderError::Invalid {
                file: "tokenizer_config.json",
                reason: format!("chat_template does not compile: {e}"),
            })?;
        let special_tokens = [
            ("bos_token", &config.bos_token),
            ("eos_token", &config.eos_token),
            ("unk_token", &config.unk_token),
            ("pad_token", &config.pad_token),
        ]
        .into_iter()
        .filter_map(|(name, token)| token.clone().map(|t| (name, t)))
        .collect();
        Ok(Some(Self {
            env,
            special_tokens,
        }))
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened
    /// (`add_generation_prompt=True`). The template's own `raise_exception` (roles out of
    /// order, say) is a bad-input error carrying its message.
    pub(crate) fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_pairs([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        let mut context = vec![
            ("messages", Value::from(messages)),
            ("add_generation_prompt", Value::from(true)),
            // transformers passes these as None when not given.
            ("tools", Value::from(())),
            ("documents", Value::from(())),
        ];
        for (name, token) in &self.special_tokens {
            context.push((name, Value::from(token.as_str())));
        }
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        template
            .render(Value::from_pairs(context))
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation => EngineError::BadInput(format!(
                    "the model's chat template refused the conversation: {}",
                    e.detail().unwrap_or("no reason given")
                )),
                _ => EngineError::BadInput(format!("the model's chat template failed: {e}")),
            })
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, with Python's separators (`", "` and `": "`, or `","` and
/// `": "` when indented) and no HTML escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(value, indent, sort_keys.unwrap_or(false), 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    value: &Value,
    indent: Option<usize>,
    sort_keys: bool,
    level: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, level: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * level));
        }
    };
    let separator = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(int) = value.as_i64().filter(|_| value.is_integer()) {
                out.push_str(&int.to_string());
            } else {
                let float = f64::try_from(value.clone())?;
                // Python writes 1.0 as "1.0", Rust's Debug does too.
                out.push_str(&format!("{float:?}"));
            }
        }
        ValueKind::String => out.push_str(&json_string(value.as_str().unwrap_or_default())),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                write_json(item, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if sort_keys {
                keys.sort();
            }
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(separator);
                }
                newline(out, level + 1);
                let name = key.as_str().map(str::to_owned).unwrap_or(key.to_string());
                out.push_str(&json_string(&name));
                out.push_str(": ");
                write_json(&value.get_item(key)?, indent, sort_keys, level + 1, out)?;
            }
            newline(out, level);
            out.push('}');
        }
        _ => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("tojson cannot write a {} value", value.kind()),
            ));
        }
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`: quotes, backslashes and
/// control characters escaped, the rest as is.
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value as Json;

    use super::*;

    fn template(model: &str) -> ChatTemplate {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(model)
            .join("tokenizer_config.json");
        let config = TokenizerConfig::parse(&std::fs::read(path).unwrap()).unwrap();
        ChatTemplate::new(&config).unwrap().unwrap()
    }

    fn messages(json: &Json) -> Vec<ChatMessage> {
        json.as_array()
            .unwrap()
            .iter()
            .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn renders_what_transformers_renders() {
        let reference: Json = serde_json::from_slice(
            &std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/fixtures/generation-reference.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let mut compared = 0;
        for model in ["tiny-llama", "tiny-qwen2", "tiny-mistral"] {
            let chat = template(model);
            for case in reference["models"][model]["chat"].as_array().unwrap() {
                let got = chat.render(&messages(&case["messages"]));
                match case.get("text") {
                    Some(want) => assert_eq!(got.unwrap(), want.as_str().unwrap(), "{model}"),
                    None => {
                        let err = got.unwrap_err().to_string();
                        let want = case["error"].as_str().unwrap();
                        assert!(err.contains(want), "{model}: {err}");
                    }
                }
                compared += 1;
            }
        }
        assert_eq!(compared, 9);
    }

    fn render(source: &str, messages: &[ChatMessage]) -> Result<String> {
        let config = TokenizerConfig {
            chat_template: Some(source.to_owned()),
            bos_token: Some("<s>".to_owned()),
            ..TokenizerConfig::default()
        };
        ChatTemplate::new(&config)?.unwrap().render(messages)
    }

    #[test]
    fn python_methods_tojson_and_undefined_tools() {
        let m = [ChatMessage::new("user", "  hi <b>\"x\"</b>  ")];
        let out = render(
            "{{ bos_token }}{% for m in messages %}{{ m.content.strip() }}|{{ m | tojson }}|\
             {{ m | tojson(indent=2) }}{% endfor %}{% if tools is not none %}T{% endif %}\
             {{ [1, 2.5, none, true] | tojson }}{{ {} | tojson }}{{ eos_token or 'no eos' }}",
            &m,
        )
        .unwrap();
        assert_eq!(
            out,
            "<s>hi <b>\"x\"</b>|{\"role\": \"user\", \"content\": \"  hi <b>\\\"x\\\"</b>  \"}|\
             {\n  \"role\": \"user\",\n  \"content\": \"  hi <b>\\\"x\\\"</b>  \"\n}\
             [1, 2.5, null, true]{}no eos"
        );
    }

    #[test]
    fn hostile_templates_are_bounded_errors() {
        let m = [ChatMessage::new("user", "x")];
        let err = render("{% for m in messages %}", &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("tokenizer_config.json: chat_template does not compile"),
            "{err}"
        );
        // Endless work runs out of fuel instead of running forever.
        let err = render(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            &m,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chat template failed"), "{err}");
        // Huge output is refused before it is allocated.
        let err = render("{{ 'x' * 1000000000000 }}", &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("out of fuel") || err.contains("too large"),
            "{err}"
        );
        let err = render("{{ raise_exception('no system role') }}", &m)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "bad input: the model's chat template refused the conversation: no system role"
        );
    }
}
