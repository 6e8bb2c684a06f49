//! Deployment settings: `llm.deployments.<name>` is one variant per provider kind, chosen by
//! its `provider` key. The shared runtime keeps the keys as given; they are checked here, at
//! start, so an unknown key or a key of another kind stops the gateway naming the key.

use boardroom_runtime::config::{DeploymentConfig, Secret};
use figment::value::{Dict, Tag, Value};
use serde::{Deserialize, Serialize};

/// The built-in deterministic model (the embedded default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// The model name it reports.
    pub model: String,
    /// Time to the whole answer (unary), ms.
    pub latency_ms: u64,
    /// Time to the first token (streams), ms.
    pub ttft_ms: u64,
    /// Tokens per second after the first (streams); 0: all at once.
    pub tokens_per_second: u32,
    /// Tokens in an answer (bounded by the request's `max_tokens`).
    pub output_tokens: u32,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            model: "mock-1".into(),
            latency_ms: 0,
            ttft_ms: 0,
            tokens_per_second: 0,
            output_tokens: 24,
        }
    }
}

/// Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, LiteLLM).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiConfig {
    /// The provider's model name.
    pub model: String,
    /// `http(s)://host:port/v1` (required).
    pub base_url: String,
    /// Bearer key; empty sends none.
    pub api_key: Secret,
    /// Idle keep-alive connections kept per host.
    pub max_idle_connections: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            base_url: String::new(),
            api_key: Secret::default(),
            max_idle_connections: 64,
        }
    }
}

/// Anthropic's Messages API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicConfig {
    /// The provider's model name (`claude-…`).
    pub model: String,
    /// The API root, without `/v1`.
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: Secret,
    /// `anthropic-version`, pinned.
    pub version: String,
    /// `max_tokens` of a request that sets none (the API requires one; an answer stops there
    /// with `finish_reason` LENGTH).
    pub max_tokens: u32,
    /// Idle keep-alive connections kept per host.
    pub max_idle_connections: usize,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            base_url: "https://api.anthropic.com".into(),
            api_key: Secret::default(),
            version: "2023-06-01".into(),
            max_tokens: 4_096,
            max_idle_connections: 64,
        }
    }
}

/// Google's Gemini API (generateContent, streamGenerateContent, batchEmbedContents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GeminiConfig {
    /// The provider's model name (`gemini-…`).
    pub model: String,
    /// The API root including its version.
    pub base_url: String,
    /// Sent as `x-goog-api-key`.
    pub api_key: Secret,
    /// Idle keep-alive connections kept per host.
    pub max_idle_connections: usize,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        Self {
            model: String::new(),
            base_url: "https://generativelanguage.googleapis.com/v1beta".into(),
            api_key: Secret::default(),
            max_idle_connections: 64,
        }
    }
}

/// Azure OpenAI: the OpenAI wire format on a resource's deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    /// `https://<resource>.openai.azure.com` (required).
    pub endpoint: String,
    /// The Azure deployment's name (required).
    pub deployment: String,
    /// `api-version` of every call.
    pub api_version: String,
    /// The model behind the deployment, for prices and reports (default: the deployment).
    pub model: String,
    /// Sent as `api-key`.
    pub api_key: Secret,
    /// Idle keep-alive connections kept per host.
    pub max_idle_connections: usize,
}

impl Default for AzureConfig {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            deployment: String::new(),
            api_version: "2024-10-21".into(),
            model: String::new(),
            api_key: Secret::default(),
            max_idle_connections: 64,
        }
    }
}

/// What serves a deployment, with that provider's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
pub enum ProviderSettings {
    /// The built-in mock.
    Mock(MockConfig),
    /// An OpenAI-compatible endpoint.
    Openai(OpenAiConfig),
    /// Anthropic Messages.
    Anthropic(AnthropicConfig),
    /// Google Gemini.
    Gemini(GeminiConfig),
    /// Azure OpenAI.
    Azure(AzureConfig),
}

/// One deployment's settings, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSettings {
    /// Share of its alias's traffic relative to the others.
    pub weight: u32,
    /// The provider and its settings.
    pub provider: ProviderSettings,
}

impl DeploymentSettings {
    /// A deployment of `provider` at weight 1.
    pub fn new(provider: ProviderSettings) -> Self {
        Self {
            weight: 1,
            provider,
        }
    }

    /// Parses `llm.deployments.<name>`; the error names the key.
    pub fn parse(name: &str, config: &DeploymentConfig) -> Result<Self, String> {
        let key = |field: &str| format!("key `llm.deployments.{name}.{field}`");
        let mut dict: Dict = config.0.clone();
        let weight = match dict.remove("weight") {
            None => 1,
            Some(value) => value
                .deserialize::<u32>()
                .map_err(|_| format!("{}: must be a whole number", key("weight")))?,
        };
        let provider: ProviderSettings =
            Value::Dict(Tag::Default, dict)
                .deserialize()
                .map_err(|err| {
                    // serde names the field ("unknown field `x`, expected one of …").
                    let at = match &err.kind {
                        figment::error::Kind::UnknownField(field, _) => key(field),
                        figment::error::Kind::MissingField(field) => key(field),
                        figment::error::Kind::UnknownVariant(..) => key("provider"),
                        _ if !err.path.is_empty() => key(&err.path.join(".")),
                        _ => format!("key `llm.deployments.{name}`"),
                    };
                    format!("{at}: {}", err.kind)
                })?;
        let required = |value: &str, field: &str, kind: &str| {
            if value.is_empty() {
                Err(format!("{} is required for provider `{kind}`", key(field)))
            } else {
                Ok(())
            }
        };
        match &provider {
            ProviderSettings::Mock(_) => {}
            ProviderSettings::Openai(c) => {
                required(&c.base_url, "base_url", "openai")?;
                required(&c.model, "model", "openai")?;
            }
            ProviderSettings::Anthropic(c) => {
                required(&c.base_url, "base_url", "anthropic")?;
                required(&c.model, "model", "anthropic")?;
                required(&c.version, "version", "anthropic")?;
            }
            ProviderSettings::Gemini(c) => {
                required(&c.base_url, "base_url", "gemini")?;
                required(&c.model, "model", "gemini")?;
            }
            ProviderSettings::Azure(c) => {
                required(&c.endpoint, "endpoint", "azure")?;
                required(&c.deployment, "deployment", "azure")?;
                required(&c.api_version, "api_version", "azure")?;
            }
        }
        Ok(Self { weight, provider })
    }

    /// The provider model it serves (the key of its price).
    pub fn model(&self) -> &str {
        match &self.provider {
            ProviderSettings::Mock(c) => &c.model,
            ProviderSettings::Openai(c) => &c.model,
            ProviderSettings::Anthropic(c) => &c.model,
            ProviderSettings::Gemini(c) => &c.model,
            ProviderSettings::Azure(c) if c.model.is_empty() => &c.deployment,
            ProviderSettings::Azure(c) => &c.model,
        }
    }
}

impl From<DeploymentSettings> for DeploymentConfig {
    fn from(settings: DeploymentSettings) -> Self {
        let mut dict = match Value::serialize(&settings.provider) {
            Ok(Value::Dict(_, dict)) => dict,
            _ => Dict::new(),
        };
        dict.insert("weight".into(), settings.weight.into());
        DeploymentConfig(dict)
    }
}

impl From<ProviderSettings> for DeploymentConfig {
    fn from(provider: ProviderSettings) -> Self {
        DeploymentSettings::new(provider).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<DeploymentSettings, String> {
        let dict: Dict =
            figment::Figment::from(figment::providers::Serialized::defaults(Dict::new()))
                .merge(<figment::providers::Toml as figment::providers::Format>::string(toml))
                .extract()
                .map_err(|e| e.to_string())?;
        DeploymentSettings::parse("d", &DeploymentConfig(dict))
    }

    #[test]
    fn each_kind_takes_its_own_keys() {
        let anthropic =
            parse("provider = 'anthropic'\nmodel = 'claude'\napi_key = 'k'\nweight = 3")
                .expect("anthropic");
        assert_eq!(anthropic.weight, 3);
        let ProviderSettings::Anthropic(c) = anthropic.provider else {
            panic!("kind")
        };
        assert_eq!(
            (c.version.as_str(), c.base_url.as_str()),
            ("2023-06-01", "https://api.anthropic.com")
        );
        let mock = parse("provider = 'mock'\nttft_ms = 20").expect("mock");
        assert_eq!(
            mock.provider,
            ProviderSettings::Mock(MockConfig {
                ttft_ms: 20,
                ..MockConfig::default()
            })
        );
        let azure = parse(
            "provider = 'azure'\nendpoint = 'https://r.openai.azure.com'\ndeployment = 'gpt4o'",
        )
        .expect("azure");
        assert_eq!(azure.model(), "gpt4o");
    }

    #[test]
    fn a_key_of_another_kind_or_an_unknown_one_is_named() {
        let err = parse("provider = 'openai'\nbase_url = 'http://x/v1'\nmodel = 'm'\nttft_ms = 5")
            .expect_err("mock key on openai");
        assert!(err.contains("`llm.deployments.d.ttft_ms`"), "{err}");
        let err = parse("provider = 'mock'\nmock_ttft_ms = 5").expect_err("old key");
        assert!(err.contains("`llm.deployments.d.mock_ttft_ms`"), "{err}");
        let err = parse("provider = 'anthropic'\nmodel = 'c'\nbase_url = 'http://x'\nversion = ''")
            .expect_err("empty version");
        assert!(err.contains("`llm.deployments.d.version`"), "{err}");
        let err = parse("provider = 'openai'\nmodel = 'm'").expect_err("no url");
        assert!(err.contains("`llm.deployments.d.base_url`"), "{err}");
        let err = parse("provider = 'bedrock'").expect_err("unknown kind");
        assert!(
            err.contains("`llm.deployments.d.provider`") && err.contains("bedrock"),
            "{err}"
        );
    }

    #[test]
    fn settings_round_trip_through_the_runtime_config() {
        let settings = DeploymentSettings {
            weight: 2,
            provider: ProviderSettings::Gemini(GeminiConfig {
                model: "gemini-2.0-flash".into(),
                ..GeminiConfig::default()
            }),
        };
        let config: DeploymentConfig = settings.clone().into();
        assert_eq!(DeploymentSettings::parse("d", &config), Ok(settings));
    }
}
