//! The daemon's HTTP API as typed calls: found through the repo's `api` file, a failed
//! call's Kubo-style error turned into one line, answers read as the API's own
//! [`types`], so the CLI and the handlers share one definition of every body.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipfs_accelerate_node::api::types;
use ipfs_accelerate_node::repo::Repo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::multipart::MultipartBody;

/// Most of a failed call's answer read for its error message.
const ERROR_TEXT_LIMIT: u64 = 64 * 1024;

/// A client of the API of the daemon holding a repo.
#[derive(Debug)]
pub(crate) struct Client {
    base: String,
    agent: ureq::Agent,
    /// The repo's `network.api_token`, sent as a bearer token.
    token: Option<String>,
}

impl Client {
    /// The API of the daemon holding the repo at `path`, if its `api` file exists.
    pub(crate) fn from_repo(path: &Path) -> Result<Option<Client>> {
        let Ok(text) = std::fs::read_to_string(Repo::api_file(path)) else {
            return Ok(None);
        };
        // "/ip4/127.0.0.1/tcp/5001"
        let parts: Vec<&str> = text.trim().split('/').collect();
        let (host, port) = match parts.as_slice() {
            ["", "ip4", host, "tcp", port] => (host.to_string(), port.to_string()),
            ["", "ip6", host, "tcp", port] => (format!("[{host}]"), port.to_string()),
            _ => bail!(
                "cannot read the daemon's API address {:?} in {}",
                text.trim(),
                path.display()
            ),
        };
        let agent = agent(None);
        let config = Repo::read_config(path)?;
        let token = config.network.api_token().map(str::to_owned);
        Ok(Some(Client {
            base: format!("http://{host}:{port}/api/v0"),
            agent,
            token,
        }))
    }

    /// The same client, giving up on any call after `limit` (doctor's probes must not
    /// hang on a stuck daemon).
    pub(crate) fn with_timeout(mut self, limit: Duration) -> Client {
        self.agent = agent(Some(limit));
        self
    }

    fn url(&self, path: &str, args: &[(&str, String)]) -> String {
        let query: Vec<String> = args
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        format!("{}/{path}?{}", self.base, query.join("&"))
    }

    /// POSTs and returns the body reader, turning Kubo-style errors into one line.
    pub(crate) fn call(
        &self,
        path: &str,
        args: &[(&str, String)],
        body: Option<(&str, &mut dyn Read)>,
    ) -> Result<impl Read + use<>> {
        let mut request = self.agent.post(&self.url(path, args));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let response = match body {
            Some((content_type, reader)) => request
                .header("Content-Type", content_type)
                .send(ureq::SendBody::from_reader(reader)),
            None => request.send_empty(),
        }
        .with_context(|| format!("calling the daemon's API ({path})"))?;
        let status = response.status();
        let reader = response.into_body().into_reader();
        if !status.is_success() {
            let mut text = String::new();
            let _ = reader.take(ERROR_TEXT_LIMIT).read_to_string(&mut text);
            let message = serde_json::from_str::<types::ErrorBody>(&text)
                .map(|error| error.message)
                .unwrap_or(text);
            bail!("{message}");
        }
        Ok(reader)
    }

    /// POSTs and reads the whole answer as text (newline-delimited JSON, mostly).
    pub(crate) fn text(&self, path: &str, args: &[(&str, String)]) -> Result<String> {
        let mut text = String::new();
        self.call(path, args, None)?.read_to_string(&mut text)?;
        Ok(text)
    }

    /// POSTs a multipart upload (how Kubo's RPC takes files) and returns the answer's
    /// text.
    pub(crate) fn upload(
        &self,
        path: &str,
        args: &[(&str, String)],
        mut body: MultipartBody,
    ) -> Result<String> {
        let content_type = body.content_type();
        let mut text = String::new();
        self.call(path, args, Some((&content_type, &mut body)))?
            .read_to_string(&mut text)?;
        Ok(text)
    }

    /// POSTs and reads the answer as `T`.
    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        path: &str,
        args: &[(&str, String)],
    ) -> Result<T> {
        parse(path, &self.text(path, args)?)
    }

    /// POSTs a JSON body and reads the answer as `T`.
    pub(crate) fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T> {
        let bytes = serde_json::to_vec(body)?;
        let mut reader = std::io::Cursor::new(bytes);
        let mut text = String::new();
        self.call(path, &[], Some(("application/json", &mut reader)))?
            .read_to_string(&mut text)?;
        parse(path, &text)
    }
}

/// An agent that reads error statuses as answers; `limit` bounds a whole call.
fn agent(limit: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_global(limit)
        .build()
        .into()
}

/// Reads one answer (or one line of a newline-delimited answer) of `path` as `T`.
pub(crate) fn parse<T: DeserializeOwned>(path: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).with_context(|| format!("reading the daemon's answer to {path}"))
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
