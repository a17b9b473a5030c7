//! `sluice pipeline validate|test|explain FILE`: a definition checked (errors at their line
//! and field), its declared tests run on the embedded engine, its stages shown.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Map, Value};

use orchestration::pipeline::{testing, Pipeline};

#[derive(Subcommand)]
pub enum PipelineCommand {
    /// Check definitions: every error with its line, column and field.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the tests declared in definitions, each on a fresh embedded engine.
    Test {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the stages, functions and queues a run will use, and the result's fields.
    Explain {
        file: PathBuf,
        /// A parameter, NAME=VALUE (VALUE as JSON, else as a string); repeatable.
        #[arg(long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Print the JSON Schema of a definition.
    Schema,
}

fn load(file: &Path) -> Result<Pipeline, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Pipeline::from_toml(&text).map_err(|e| format!("{}: {e}", file.display()))
}

/// `NAME=VALUE` pairs as params: VALUE as JSON when it parses, else a string.
pub fn params(pairs: &[String]) -> Result<Map<String, Value>> {
    let mut out = Map::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("`{pair}`: a parameter is NAME=VALUE"))?;
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        out.insert(k.to_owned(), value);
    }
    Ok(out)
}

pub async fn run(command: PipelineCommand, state_dir: &Path) -> Result<i32> {
    match command {
        PipelineCommand::Validate { files } => {
            let mut failed = 0;
            for f in &files {
                match load(f) {
                    Ok(p) => println!(
                        "{}: ok ({} params, {} steps, {} result fields, {} tests)",
                        f.display(),
                        p.def.params.len(),
                        p.def.steps.len(),
                        p.def.reduce.len(),
                        p.def.tests.len()
                    ),
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                    }
                }
            }
            Ok(i32::from(failed > 0))
        }
        PipelineCommand::Test { files } => {
            let (mut passed, mut failed) = (0, 0);
            for f in &files {
                let p = match load(f) {
                    Ok(p) => p,
                    Err(e) => {
                        failed += 1;
                        eprintln!("{e}");
                        continue;
                    }
                };
                let dir = state_dir.join("pipeline-tests").join(&p.def.name);
                for (name, outcome) in testing::run_all(&p, &dir).await {
                    match outcome {
                        Ok(()) => {
                            passed += 1;
                            println!("ok    {} :: {name}", f.display());
                        }
                        Err(e) => {
                            failed += 1;
                            println!("FAIL  {} :: {name}: {e}", f.display());
                        }
                    }
                }
            }
            println!("{passed} passed, {failed} failed");
            Ok(i32::from(failed > 0))
        }
        PipelineCommand::Explain {
            file,
            params: pairs,
        } => {
            let p = load(&file).map_err(anyhow::Error::msg)?;
            let given = params(&pairs)?;
            let checked = p
                .read_params(&Value::Object(given))
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            print!(
                "{}",
                p.explain(&checked)
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?
            );
            Ok(0)
        }
        PipelineCommand::Schema => {
            println!(
                "{}",
                serde_json::to_string_pretty(&orchestration::pipeline::Definition::json_schema())?
            );
            Ok(0)
        }
    }
}
