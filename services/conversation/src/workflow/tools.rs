//! Built-in tools advisors may call: a calculator and a search over the thread's own
//! messages. Both are deterministic (search: for a given seq the thread has reached), so
//! their results are cached.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::ports::{ToolInvocation, ToolSpec};
use crate::store::ConversationStore;

/// Every tool offered to advisors.
pub const TOOLS: [ToolSpec; 2] = [
    ToolSpec {
        name: "calculator",
        description: "Evaluates an arithmetic expression (+ - * / and parentheses).",
        parameters_json_schema: r#"{"type":"object","properties":{"expression":{"type":"string"}},"required":["expression"]}"#,
    },
    ToolSpec {
        name: "search_thread",
        description: "Finds earlier messages of this conversation containing a phrase.",
        parameters_json_schema: r#"{"type":"object","properties":{"query":{"type":"string"}},"required":["query"]}"#,
    },
];

/// Longest accepted tool argument.
const MAX_ARGUMENT_BYTES: usize = 512;
/// Messages a search returns.
const SEARCH_HITS: u64 = 5;

/// A tool's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn error(message: impl Into<String>) -> Self {
        Self {
            content: message.into(),
            is_error: true,
        }
    }
}

/// Runs tool calls, with a cache of their deterministic results.
#[derive(Clone)]
pub struct Toolbox {
    store: ConversationStore,
    results: moka::future::Cache<String, Arc<ToolOutput>>,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Toolbox").finish_non_exhaustive()
    }
}

fn argument(call: &ToolInvocation, name: &str) -> Result<String, ToolOutput> {
    let value: serde_json::Value = serde_json::from_str(&call.arguments_json)
        .map_err(|_| ToolOutput::error("arguments are not a JSON object"))?;
    let text = value
        .get(name)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ToolOutput::error(format!("argument `{name}` (a string) is required")))?;
    if text.len() > MAX_ARGUMENT_BYTES {
        return Err(ToolOutput::error(format!(
            "argument `{name}` is longer than {MAX_ARGUMENT_BYTES} bytes"
        )));
    }
    Ok(text.trim().to_owned())
}

impl Toolbox {
    /// Tools over `store`'s messages; up to 10k results cached for 10 minutes.
    pub fn new(store: ConversationStore) -> Self {
        Self {
            store,
            results: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(600))
                .build(),
        }
    }

    /// Results held in memory now.
    pub fn cached(&self) -> u64 {
        self.results.entry_count()
    }

    /// Runs one call for a thread that has reached `through_seq`. Never fails: a bad call is
    /// an error result the model can read.
    pub async fn run(
        &self,
        thread_id: Uuid,
        through_seq: i64,
        call: &ToolInvocation,
    ) -> ToolOutput {
        let key = match call.name.as_str() {
            "calculator" => match argument(call, "expression") {
                Ok(expression) => format!("calc\0{expression}"),
                Err(e) => return e,
            },
            "search_thread" => match argument(call, "query") {
                Ok(query) if query.is_empty() => return ToolOutput::error("empty query"),
                Ok(query) => format!("search\0{thread_id}\0{through_seq}\0{query}"),
                Err(e) => return e,
            },
            other => return ToolOutput::error(format!("no tool named {other:?}")),
        };
        let run = async {
            let mut parts = key.split('\0');
            let output = match parts.next() {
                Some("calc") => calculate(parts.next().unwrap_or_default()),
                _ => {
                    let query = parts.nth(2).unwrap_or_default();
                    self.search(thread_id, through_seq, query).await
                }
            };
            Arc::new(output)
        };
        let cached = self.results.get_with(key.clone(), run).await;
        metrics::counter!("conversation_tool_calls_total", "tool" => if call.name == "calculator" { "calculator" } else { "search_thread" })
            .increment(1);
        (*cached).clone()
    }

    async fn search(&self, thread_id: Uuid, through: i64, query: &str) -> ToolOutput {
        match self
            .store
            .search(thread_id, query, through, SEARCH_HITS)
            .await
        {
            Ok(hits) if hits.is_empty() => ToolOutput {
                content: format!("no earlier message mentions {query:?}"),
                is_error: false,
            },
            Ok(hits) => ToolOutput {
                content: hits
                    .iter()
                    .map(|m| {
                        let text: String = m.content.chars().take(200).collect();
                        format!("#{} [{} {}] {}", m.seq, m.role.as_str(), m.author, text)
                    })
                    .collect::<Vec<_>>()
                    .join("\n"),
                is_error: false,
            },
            Err(err) => ToolOutput::error(format!("search failed: {err}")),
        }
    }
}

/// Evaluates `+ - * /`, unary minus and parentheses over decimal numbers.
pub fn calculate(expression: &str) -> ToolOutput {
    let mut parser = Parser {
        chars: expression.chars().filter(|c| !c.is_whitespace()).collect(),
        at: 0,
        depth: 0,
    };
    let result = parser.sum().and_then(|value| {
        if parser.at == parser.chars.len() {
            Ok(value)
        } else {
            Err(format!(
                "unexpected {:?} at {}",
                parser.chars[parser.at], parser.at
            ))
        }
    });
    match result {
        Ok(value) if value.is_finite() => ToolOutput {
            content: format_number(value),
            is_error: false,
        },
        Ok(_) => ToolOutput::error("the result is not a finite number"),
        Err(message) => ToolOutput::error(message),
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.10}");
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

struct Parser {
    chars: Vec<char>,
    at: usize,
    depth: u32,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn sum(&mut self) -> Result<f64, String> {
        let mut value = self.product()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.at += 1;
            let rhs = self.product()?;
            value = if op == '+' { value + rhs } else { value - rhs };
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<f64, String> {
        let mut value = self.factor()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.at += 1;
            let rhs = self.factor()?;
            if op == '/' && rhs == 0.0 {
                return Err("division by zero".into());
            }
            value = if op == '*' { value * rhs } else { value / rhs };
        }
        Ok(value)
    }

    fn factor(&mut self) -> Result<f64, String> {
        self.depth += 1;
        if self.depth > 64 {
            return Err("expression nested too deeply".into());
        }
        let value = match self.peek() {
            Some('-') => {
                self.at += 1;
                -self.factor()?
            }
            Some('(') => {
                self.at += 1;
                let inner = self.sum()?;
                if self.peek() != Some(')') {
                    return Err("missing )".into());
                }
                self.at += 1;
                inner
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                    self.at += 1;
                }
                let text: String = self.chars[start..self.at].iter().collect();
                text.parse::<f64>()
                    .map_err(|_| format!("{text:?} is not a number"))?
            }
            Some(c) => return Err(format!("unexpected {c:?} at {}", self.at)),
            None => return Err("the expression ends early".into()),
        };
        self.depth -= 1;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calculates_with_precedence_and_refuses_nonsense() {
        assert_eq!(calculate("2 + 3 * 4").content, "14");
        assert_eq!(calculate("(2 + 3) * -4").content, "-20");
        assert_eq!(calculate("1 / 4").content, "0.25");
        assert!(calculate("1 / 0").is_error);
        assert!(calculate("2 +").is_error);
        assert!(calculate("rm -rf").is_error);
        assert!(calculate(&"(".repeat(500)).is_error);
    }
}
