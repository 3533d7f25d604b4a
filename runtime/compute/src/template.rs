//! Filling `{…}` placeholders of boot commands and health checks with a VM's values at the
//! target: `{disk.NAME}`, `{nicN.ip}`, `{vm.name}`, `{vm.site}`. `{{` and `}}` are literal braces.

/// What is wrong with a text's placeholders.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed `{{` in `{text}`")]
    Unclosed { text: String },
    #[error("unknown placeholder `{{{name}}}` in `{text}`")]
    Unknown { name: String, text: String },
    #[error("stray `}}` in `{text}`")]
    Stray { text: String },
}

/// Replaces every placeholder with `value(name)`; an unknown one is an error naming it.
pub fn fill(text: &str, value: &dyn Fn(&str) -> Option<String>) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['{', '}']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            out.push_str(&tail[..1]);
            rest = &tail[2..];
        } else if let Some(tail) = tail.strip_prefix('{') {
            let close = tail.find('}').ok_or_else(|| TemplateError::Unclosed {
                text: text.to_string(),
            })?;
            let name = tail[..close].trim();
            out.push_str(&value(name).ok_or_else(|| TemplateError::Unknown {
                name: name.to_string(),
                text: text.to_string(),
            })?);
            rest = &tail[close + 1..];
        } else {
            return Err(TemplateError::Stray {
                text: text.to_string(),
            });
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::fill;

    #[test]
    fn fills_known_placeholders_and_names_unknown_ones() {
        let v = |n: &str| match n {
            "nic0.ip" => Some("127.0.0.9".to_string()),
            "disk.os" => Some("/tmp/os.img".to_string()),
            _ => None,
        };
        assert_eq!(
            fill("{nic0.ip}:80 {{x}} {disk.os}", &v).unwrap(),
            "127.0.0.9:80 {x} /tmp/os.img"
        );
        let unknown = fill("{nic1.ip}", &v).unwrap_err();
        assert_eq!(
            unknown,
            super::TemplateError::Unknown {
                name: "nic1.ip".into(),
                text: "{nic1.ip}".into()
            }
        );
        assert!(unknown.to_string().contains("`{nic1.ip}`"), "{unknown}");
        assert!(matches!(
            fill("{nic0.ip", &v),
            Err(super::TemplateError::Unclosed { .. })
        ));
        assert!(matches!(
            fill("a } b", &v),
            Err(super::TemplateError::Stray { .. })
        ));
    }
}
