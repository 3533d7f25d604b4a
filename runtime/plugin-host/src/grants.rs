//! What a step may touch: the plan's `allow`, with placeholders already substituted.

/// A step's grants. Everything not listed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// VMs the step may act on (inventory, recovery, compute, network).
    pub vms: Vec<String>,
    /// `host:port` addresses the step may probe over TCP, exactly.
    pub tcp: Vec<String>,
    /// URL prefixes the step may request: `URL` grants GET and HEAD (probes), `METHOD URL` that
    /// method.
    pub http: Vec<String>,
    /// Run-scoped kv keys the step may write; a trailing `*` grants a prefix.
    pub kv: Vec<String>,
    /// Where the grants were written (`plans/erp.toml:24`), named in denials.
    pub origin: String,
}

impl Grants {
    pub fn vm(&self, name: &str) -> bool {
        self.vms.iter().any(|v| v == name)
    }

    pub fn tcp(&self, address: &str) -> bool {
        self.tcp.iter().any(|a| a == address)
    }

    /// Whether a GET of `url` is granted (a probe).
    pub fn http(&self, url: &str) -> bool {
        self.http_request("GET", url)
    }

    /// Whether a `method` request to `url` is granted. A URL is granted when it starts with a
    /// granted prefix at a boundary: the prefix ends in `/`, or the URL continues with `/`, `?`
    /// or nothing. So `http://a:80` does not grant `http://a:8080`. An entry without a method
    /// grants GET and HEAD; `POST https://h/` grants POST only.
    pub fn http_request(&self, method: &str, url: &str) -> bool {
        let method = method.to_ascii_uppercase();
        self.http.iter().any(|entry| {
            let (allowed, prefix) = match entry.split_once(' ') {
                Some((m, p)) => (m.eq_ignore_ascii_case(&method), p.trim()),
                None => (method == "GET" || method == "HEAD", entry.as_str()),
            };
            allowed
                && url.strip_prefix(prefix).is_some_and(|rest| {
                    prefix.ends_with('/')
                        || rest.is_empty()
                        || rest.starts_with('/')
                        || rest.starts_with('?')
                })
        })
    }

    pub fn kv(&self, key: &str) -> bool {
        self.kv.iter().any(|k| match k.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => k == key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_prefixes_stop_at_a_boundary() {
        let g = Grants {
            http: vec!["http://127.0.0.1:80".into(), "http://h/api/".into()],
            ..Grants::default()
        };
        assert!(g.http("http://127.0.0.1:80/health"));
        assert!(g.http("http://127.0.0.1:80"));
        assert!(!g.http("http://127.0.0.1:8080/health"));
        // A plain entry grants GET and HEAD, nothing else.
        assert!(g.http_request("HEAD", "http://h/api/x"));
        assert!(!g.http_request("POST", "http://h/api/x"));
        let hooks = Grants {
            http: vec!["POST https://hooks.example.com/services/".into()],
            ..Grants::default()
        };
        assert!(hooks.http_request("POST", "https://hooks.example.com/services/T1"));
        assert!(hooks.http_request("post", "https://hooks.example.com/services/T1"));
        assert!(!hooks.http_request("GET", "https://hooks.example.com/services/T1"));
        assert!(!hooks.http_request("PUT", "https://hooks.example.com/services/T1"));
        assert!(!hooks.http_request("POST", "https://hooks.example.com/other"));
        assert!(!hooks.http_request("POST", "https://hooks.example.com.evil/services/"));
        assert!(g.http("http://h/api/x"));
        assert!(!g.http("http://h/apix"));
    }

    #[test]
    fn kv_prefix_grants() {
        let g = Grants {
            kv: vec!["db.*".into(), "exact".into()],
            ..Grants::default()
        };
        assert!(g.kv("db.primary"));
        assert!(g.kv("exact"));
        assert!(!g.kv("exactly"));
        assert!(!g.kv("app.x"));
    }
}
