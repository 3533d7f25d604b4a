//! The docs cannot drift: every TOML example in README.md, CONTRIBUTING.md, ARCHITECTURE.md,
//! plugins/README.md and docs/ parses, and every `lifeboat …` line in a `sh` block is a command
//! line the CLI accepts (its command and flags exist). An example that is not meant to run goes
//! in a `text` block.

use std::path::{Path, PathBuf};

use crate::support;

/// One fenced block: its file, the line of its opening fence, its language and its text.
struct Block {
    file: PathBuf,
    line: usize,
    lang: String,
    text: String,
}

fn markdown_files() -> Vec<PathBuf> {
    let root = support::root();
    let mut files: Vec<PathBuf> = [
        "README.md",
        "CONTRIBUTING.md",
        "ARCHITECTURE.md",
        "plugins/README.md",
    ]
    .iter()
    .map(|f| root.join(f))
    .collect();
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn blocks(file: &Path) -> Vec<Block> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(lang)) => {
                open = Some(Block {
                    file: file.to_path_buf(),
                    line: n + 1,
                    lang: lang.trim().to_string(),
                    text: String::new(),
                })
            }
            (Some(_), Some(_)) => out.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(
        open.is_none(),
        "{}: a code block is never closed",
        file.display()
    );
    out
}

fn place(b: &Block) -> String {
    let root = format!("{}/", support::root().display());
    format!(
        "{}:{}",
        b.file.display().to_string().replace(&root, ""),
        b.line
    )
}

/// `schema` with every `required` list removed: an example may leave out what it does not
/// show, but every key it writes must exist with a value of the right type.
fn partial(mut schema: serde_json::Value) -> serde_json::Value {
    match &mut schema {
        serde_json::Value::Object(map) => {
            map.remove("required");
            for v in map.values_mut() {
                *v = partial(v.take());
            }
        }
        serde_json::Value::Array(items) => {
            for v in items.iter_mut() {
                *v = partial(v.take());
            }
        }
        _ => {}
    }
    schema
}

fn partial_validator(file: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(support::root().join(file)).unwrap();
    jsonschema::validator_for(&partial(serde_json::from_str(&text).unwrap())).unwrap()
}

/// Every TOML example parses and is (part of) an inventory or a plan: its keys exist where it
/// writes them, its values have their types. A fragment says where it goes on its first line
/// (`# in a [[group]] table`, `# in a [vms.NAME] table`).
#[test]
fn every_toml_example_is_a_valid_part_of_an_inventory_or_a_plan() {
    let plan = partial_validator("schemas/plan.schema.json");
    let inventory = partial_validator("schemas/inventory.schema.json");
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in markdown_files() {
        for b in blocks(&file).iter().filter(|b| b.lang == "toml") {
            checked += 1;
            let table = match b.text.parse::<toml::Table>() {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{}: does not parse: {e}", place(b)));
                    continue;
                }
            };
            let mut json = serde_json::to_value(&table).unwrap();
            let first = b.text.trim_start().lines().next().unwrap_or_default();
            if first.starts_with("# in a [[group]] table") {
                json = serde_json::json!({ "group": [json] });
            } else if first.starts_with("# in a [vms.NAME] table") {
                json = serde_json::json!({ "vms": { "NAME": json } });
            }
            if !plan.is_valid(&json) && !inventory.is_valid(&json) {
                let why: Vec<String> = inventory
                    .iter_errors(&json)
                    .map(|e| format!("inventory: {e} at {}", e.instance_path()))
                    .chain(
                        plan.iter_errors(&json)
                            .map(|e| format!("plan: {e} at {}", e.instance_path())),
                    )
                    .take(4)
                    .collect();
                problems.push(format!(
                    "{}: neither an inventory nor a plan: {}",
                    place(b),
                    why.join("; ")
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "TOML examples that drifted:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 5,
        "only {checked} TOML examples found: are the docs where this test looks?"
    );
}

#[test]
fn a_misspelt_key_in_an_example_would_be_caught() {
    let inventory = partial_validator("schemas/inventory.schema.json");
    let good: toml::Table = "[sites.east]\nstore = \"/srv/east\"".parse().unwrap();
    let bad: toml::Table = "[sites.east]\nstroe = \"/srv/east\"".parse().unwrap();
    assert!(inventory.is_valid(&serde_json::to_value(&good).unwrap()));
    assert!(!inventory.is_valid(&serde_json::to_value(&bad).unwrap()));
}

/// The `lifeboat` command line of a shell line, if it runs one: `lifeboat ARGS` or `cargo run
/// … -p lifeboat -- ARGS`, without a trailing comment.
fn lifeboat_args(line: &str) -> Option<Vec<String>> {
    let line = line
        .trim()
        .trim_start_matches("$ ")
        .trim_start_matches("sudo ");
    let line = line.split(" #").next().unwrap_or(line).trim();
    let rest = if let Some(r) = line.strip_prefix("lifeboat ") {
        r
    } else if line.starts_with("cargo run") && line.contains("-p lifeboat ") {
        line.split_once(" -- ")?.1
    } else {
        return None;
    };
    // Pipes, redirections and substitutions belong to the shell: check the command before them.
    let rest = rest.split(['|', '>', '&', ';']).next().unwrap_or(rest);
    let mut args = vec!["lifeboat".to_string()];
    args.extend(
        rest.split_whitespace()
            .map(|a| a.trim_matches(['"', '\'']).to_string()),
    );
    Some(args)
}

#[test]
fn every_lifeboat_command_in_a_shell_example_is_one_the_cli_accepts() {
    let mut checked = 0;
    let mut problems = Vec::new();
    for file in markdown_files() {
        for b in blocks(&file).iter().filter(|b| b.lang == "sh") {
            for (i, line) in b.text.lines().enumerate() {
                let Some(args) = lifeboat_args(line) else {
                    continue;
                };
                checked += 1;
                if let Err(e) = lifeboat_cli::accepts(&args) {
                    let first = e.to_string().lines().next().unwrap_or_default().to_string();
                    problems.push(format!(
                        "{} (line {}): `{}`: {first}",
                        place(b),
                        b.line + 1 + i,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "commands in the docs the CLI refuses:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 20,
        "only {checked} commands found in the docs' shell examples"
    );
}

#[test]
fn a_wrong_flag_in_an_example_would_be_caught() {
    let args = lifeboat_args("lifeboat replicate --no-such-flag  # a typo").unwrap();
    assert!(lifeboat_cli::accepts(&args).is_err());
    let args = lifeboat_args("cargo run --release -p lifeboat -- points list db-1").unwrap();
    assert_eq!(args, ["lifeboat", "points", "list", "db-1"]);
    assert!(lifeboat_cli::accepts(&args).is_ok());
}
