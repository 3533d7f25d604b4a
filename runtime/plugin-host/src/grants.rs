//! What a step may touch: the plan's `allow`, with placeholders already substituted.

/// A step's grants. Everything not listed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// VMs the step may act on (inventory, recovery, compute, network).
    pub vms: Vec<String>,
    /// `host:port` addresses the step may probe over TCP, exactly.
    pub tcp: Vec<String>,
    /// URL prefixes the step may GET.
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

    /// A URL is granted when it starts with a granted prefix at a boundary: the prefix ends in
    /// `/`, or the URL continues with `/`, `?` or nothing. So `http://a:80` does not grant
    /// `http://a:8080`.
    pub fn http(&self, url: &str) -> bool {
        self.http.iter().any(|prefix| {
            url.strip_prefix(prefix.as_str()).is_some_and(|rest| {
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
