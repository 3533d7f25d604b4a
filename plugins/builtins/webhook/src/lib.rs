//! `builtin:webhook`: sends JSON to an HTTP(S) endpoint and succeeds when it answers 2xx.
//!
//! ```toml
//! with = { url = "https://hooks.example.com/services/T0/B0", method = "POST",
//!          headers = { Authorization = "Bearer …" }, timeout_ms = 10000 }
//! allow = { http = ["POST https://hooks.example.com/services/"] }
//! ```
//!
//! The body is `body` when given (a string, sent as it is), else a JSON document of the step's
//! context and, for an alert, the event that fired it (`event`, as `lifeboat events --output json`
//! prints it) with `text`, a line for chat tools. A non-2xx answer fails the step (so the runtime
//! retries it); redirects are not followed.

use lifeboat_plugin_sdk::http::{Header, Request};
use lifeboat_plugin_sdk::serde_json::{Value, json};
use lifeboat_plugin_sdk::{Capability, Config, Error, Outputs, Step, StepContext, http};

struct Webhook;

const METHODS: &[&str] = &["POST", "PUT", "PATCH", "GET", "DELETE"];

impl Step for Webhook {
    const NAME: &'static str = "webhook";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const CAPABILITIES: &'static [Capability] = &[Capability::ProbeHttp];

    fn validate(config: &Config, _context: &StepContext) -> Vec<String> {
        let mut problems =
            config.unknown_keys(&["url", "method", "headers", "body", "timeout_ms", "event"]);
        match config.str("url") {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {}
            Some(u) => problems.push(format!(
                "`url` must be an http:// or https:// URL, got `{u}`"
            )),
            None => problems.push("`url` is required".into()),
        }
        if let Some(m) = config.get("method")
            && !m
                .as_str()
                .is_some_and(|m| METHODS.contains(&m.to_ascii_uppercase().as_str()))
        {
            problems.push(format!("`method` must be one of {}", METHODS.join(", ")));
        }
        if let Some(h) = config.get("headers")
            && !h
                .as_object()
                .is_some_and(|h| h.values().all(Value::is_string))
        {
            problems.push("`headers` must be a table of strings".into());
        }
        if let Some(b) = config.get("body")
            && !b.is_string()
        {
            problems.push("`body` must be a string".into());
        }
        problems
    }

    fn run(config: &Config, context: &StepContext) -> Result<Outputs, Error> {
        let url = config
            .str("url")
            .ok_or_else(|| Error::Invalid("`url` is required".into()))?;
        let method = config.str("method").unwrap_or("POST").to_ascii_uppercase();
        if context.dry_run {
            lifeboat_plugin_sdk::info(&format!("dry run: would send {method} {url}"));
            return Ok(Outputs::new());
        }
        let timeout = config
            .u64("timeout_ms")
            .unwrap_or(10_000)
            .min(u64::from(u32::MAX)) as u32;
        let mut headers: Vec<Header> = config
            .get("headers")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                Some(Header {
                    name: k.clone(),
                    value: v.as_str()?.to_string(),
                })
            })
            .collect();
        let body = match config.str("body") {
            Some(b) => b.as_bytes().to_vec(),
            None => {
                if !headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(Header {
                        name: "Content-Type".into(),
                        value: "application/json".into(),
                    });
                }
                document(config, context).to_string().into_bytes()
            }
        };
        let answer = http::send(&Request {
            method: method.clone(),
            url: url.to_string(),
            headers,
            body,
            timeout_ms: timeout,
        })?;
        if !(200..300).contains(&answer.status) {
            let text = String::from_utf8_lossy(&answer.body);
            let text: String = text.chars().take(200).collect();
            return Err(Error::Other(format!(
                "{method} {url} answered {}: {text}",
                answer.status
            )));
        }
        lifeboat_plugin_sdk::info(&format!("{method} {url} answered {}", answer.status));
        let mut outputs = Outputs::new();
        outputs.insert("status".into(), answer.status.into());
        Ok(outputs)
    }
}

/// What is sent without a `body`: the context, the event if any, and a line for people.
fn document(config: &Config, context: &StepContext) -> Value {
    let event = config.get("event").cloned().unwrap_or(Value::Null);
    let text = event
        .get("message")
        .and_then(Value::as_str)
        .map(|m| format!("lifeboat: {m}"))
        .unwrap_or_else(|| {
            format!(
                "lifeboat: plan {} run {} step {}",
                context.plan, context.run_id, context.step
            )
        });
    json!({
        "text": text,
        "plan": context.plan,
        "run": context.run_id,
        "group": context.group,
        "step": context.step,
        "attempt": context.attempt,
        "event": event,
    })
}

lifeboat_plugin_sdk::export_step!(Webhook);
