//! The WIT package in `wit/` parses and keeps the shape plugins are built against.

use crate::support::root;

#[test]
fn the_wit_package_parses_and_exports_the_step_world() {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(root().join("wit")).expect("wit/ parses");
    let name = &resolve.packages[package].name;
    assert_eq!(name.to_string(), "lifeboat:plan@0.1.1");
    let world = resolve
        .select_world(&[package], Some("step"))
        .expect("a `step` world");
    let exports: Vec<String> = resolve.worlds[world]
        .exports
        .keys()
        .map(|k| resolve.name_world_key(k))
        .collect();
    for export in ["describe", "validate", "run", "undo"] {
        assert!(
            exports.iter().any(|e| e == export),
            "`step` exports {export}: {exports:?}"
        );
    }
    let imports = resolve.worlds[world].imports.len();
    assert!(imports >= 10, "only {imports} imports");
}
