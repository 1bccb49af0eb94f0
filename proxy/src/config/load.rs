//! Loading: YAML in and out (with the key path of any error), the JSON schema, and the
//! values a loaded configuration resolves against the environment (instance id, server
//! references, Kafka client properties, bind addresses).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use super::schema::*;
use super::validate::parse_socket_addr;
use super::{ConfigError, DEFAULT_INSTANCE_ID, INSTANCE_PLACEHOLDER, Violation, key_segment};

impl Config {
    /// Parses and validates a YAML document.
    pub fn from_yaml_str(yaml: &str) -> Result<Config, ConfigError> {
        parse_yaml(yaml, None)
    }

    /// Reads, parses and validates a YAML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        parse_yaml(&yaml, Some(&path.display().to_string()))
    }

    /// Renders the configuration as YAML that [`Config::from_yaml_str`] reads back equal.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }

    /// This config with the values of secret Kafka properties (`sasl.password`,
    /// `ssl.key.pem`, ...) replaced by `<redacted>`: what `--check` prints.
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        config.kafka.properties = super::schema::redact_secrets(&self.kafka.properties);
        config
    }

    /// The JSON schema (draft 2020-12) of the file.
    pub fn json_schema() -> serde_json::Value {
        schemars::schema_for!(Config).to_value()
    }

    /// `instanceId`, else `$HOSTNAME`, else `proxy-0`.
    pub fn effective_instance_id(&self) -> String {
        self.effective_instance_id_with(|var| std::env::var(var).ok())
    }

    /// [`Config::effective_instance_id`] with an explicit environment lookup.
    pub fn effective_instance_id_with(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        self.instance_id
            .clone()
            .or_else(|| lookup("HOSTNAME").filter(|h| !h.trim().is_empty()))
            .unwrap_or_else(|| DEFAULT_INSTANCE_ID.to_owned())
    }

    /// This pod's server reference: `cluster.serverReference` with `{instance}` replaced by
    /// `instance_id`; `None` when no template is configured.
    pub fn server_reference(&self, instance_id: &str) -> Option<String> {
        self.cluster
            .server_reference
            .as_ref()
            .map(|template| template.replace(INSTANCE_PLACEHOLDER, instance_id))
    }

    /// This process's server reference for each listener that has a template of its own
    /// (`listeners[].serverReference`), by listener name; the others use
    /// [`Config::server_reference`].
    pub fn listener_server_references(&self, instance_id: &str) -> BTreeMap<String, String> {
        self.listeners
            .iter()
            .filter_map(|l| {
                let template = l.server_reference.as_ref()?;
                Some((l.name.clone(), template.replace(INSTANCE_PLACEHOLDER, instance_id)))
            })
            .collect()
    }
}

impl Kafka {
    /// `bootstrap.servers` plus `properties`, plus `propertiesFromEnv` resolved with `env`,
    /// plus `propertiesFromFiles` read with `read` (a variable that is not set or a file
    /// that cannot be read is an error naming its key path, never the value).
    pub fn client_properties_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
        read: impl Fn(&str) -> std::io::Result<String>,
    ) -> Result<BTreeMap<String, String>, ConfigError> {
        let mut out = self.properties.clone();
        out.insert("bootstrap.servers".to_owned(), self.bootstrap_servers.clone());
        let mut missing = Vec::new();
        for (property, var) in &self.properties_from_env {
            match env(var) {
                Some(value) => {
                    out.insert(property.clone(), value);
                }
                None => missing.push(Violation {
                    path: format!("kafka.propertiesFromEnv{}", key_segment(property)),
                    message: format!("environment variable {var} is not set"),
                }),
            }
        }
        for (property, path) in &self.properties_from_files {
            match read(path) {
                Ok(mut value) => {
                    if value.ends_with('\n') {
                        value.pop();
                        if value.ends_with('\r') {
                            value.pop();
                        }
                    }
                    out.insert(property.clone(), value);
                }
                Err(error) => missing.push(Violation {
                    path: format!("kafka.propertiesFromFiles{}", key_segment(property)),
                    message: format!("cannot read {path}: {error}"),
                }),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(ConfigError::Invalid(missing))
        }
    }

    /// [`Kafka::client_properties_with`] reading the process environment and the files.
    pub fn client_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        self.client_properties_with(|var| std::env::var(var).ok(), |path| std::fs::read_to_string(path))
    }
}

impl ListenerProtocol {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Tcp => "tcp",
            ListenerProtocol::Tls => "tls",
            ListenerProtocol::Websocket => "websocket",
        }
    }
}

impl Listener {
    /// The bind address (validated by [`Config::validate`]).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_socket_addr(&self.address).map_err(|msg| ConfigError::invalid(format!("listener {}", self.name), msg))
    }

    /// HTTP path of a websocket listener (`/mqtt` unless configured).
    pub fn websocket_path(&self) -> &str {
        self.path.as_deref().unwrap_or("/mqtt")
    }
}

impl Admin {
    /// The bind address (validated by [`Config::validate`]).
    pub fn socket_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_socket_addr(&self.address).map_err(|msg| ConfigError::invalid("admin.address", msg))
    }
}

fn parse_yaml(yaml: &str, source_name: Option<&str>) -> Result<Config, ConfigError> {
    let mut failed_path: Option<String> = None;
    let parsed = serde_saphyr::with_deserializer_from_str(yaml, |de| {
        serde_path_to_error::deserialize::<_, Config>(de).map_err(|err| {
            failed_path = Some(err.path().to_string());
            err.into_inner()
        })
    });
    let config = parsed.map_err(|err| yaml_error(&err, failed_path.as_deref().unwrap_or(""), source_name))?;
    config.validate()?;
    Ok(config)
}

fn yaml_error(err: &serde_saphyr::Error, path: &str, source_name: Option<&str>) -> ConfigError {
    let plain = serde_saphyr::render_options! { snippets: serde_saphyr::SnippetMode::Off };
    let message = err.render_with_options(plain);
    let rendered = err.render_with_options(serde_saphyr::render_options! { source_name: source_name });
    // serde_path_to_error writes "." for the root and "?" when it lost track.
    let mut path = match path {
        "." | "?" => String::new(),
        p => p.to_owned(),
    };
    // An empty document (or one of comments only) lacks the one required key.
    let message = if matches!(err.without_snippet(), serde_saphyr::Error::Eof { .. }) && path.is_empty() {
        format!("missing field `kafka` (the document is empty) {message}")
    } else {
        message
    };
    // Name the missing key itself: `listeners[0].address`, not `listeners[0]`.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        path = if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        };
    }
    let location = err.location();
    ConfigError::Parse {
        path,
        message,
        line: location.map(|l| l.line()),
        column: location.map(|l| l.column()),
        rendered,
    }
}
