//! The built-in plan steps (`builtin:boot-group`, `builtin:tcp-check`, `builtin:http-check`,
//! `builtin:approval`, `builtin:wait`, `builtin:webhook`): WebAssembly components built from `plugins/builtins/` and
//! embedded in the binary, so a plan cannot tell them from a team's own plugins.

#![forbid(unsafe_code)]

include!(concat!(env!("OUT_DIR"), "/components.rs"));

/// The component of `builtin:NAME`.
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}
