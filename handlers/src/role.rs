//! Which function this process is. Every function of a deployment runs the same
//! `bootstrap` (one build, one artefact, `sam build` compiles it once) and picks its role
//! at start: `SLUICE_FUNCTION` if set, else the function's own name (Lambda sets
//! `AWS_LAMBDA_FUNCTION_NAME`), which the template makes `{stack}-{role}`.

use std::fmt;

use orchestration::aws::config::{logical_function, ENV_PREFIX, FUNCTIONS};
use orchestration::flow::Function;

/// Names the role explicitly (local runs, tests); Lambda's function name is the fallback.
pub const ENV_FUNCTION: &str = "SLUICE_FUNCTION";
/// Set by Lambda in every function's environment.
pub const ENV_LAMBDA_FUNCTION_NAME: &str = "AWS_LAMBDA_FUNCTION_NAME";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Daemon,
    Sweeper,
    Stage(Function),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct RoleError(String);

impl Role {
    /// The role of a logical function name (`config::FUNCTIONS`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "api" => Some(Self::Api),
            "daemon" => Some(Self::Daemon),
            "sweeper" => Some(Self::Sweeper),
            other => Function::STAGE_FUNCTIONS
                .into_iter()
                .find(|f| f.as_str() == other)
                .map(Self::Stage),
        }
    }

    /// The role from the environment, read through `get` (`std::env::var` in a process).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, RoleError> {
        let known = || FUNCTIONS.join(", ");
        if let Some(name) = get(ENV_FUNCTION).filter(|n| !n.trim().is_empty()) {
            return Self::from_name(name.trim()).ok_or_else(|| {
                RoleError(format!(
                    "{ENV_FUNCTION}={name:?} is not a function (one of {})",
                    known()
                ))
            });
        }
        let (Some(function), Some(prefix)) = (get(ENV_LAMBDA_FUNCTION_NAME), get(ENV_PREFIX))
        else {
            return Err(RoleError(format!(
                "set {ENV_FUNCTION} to one of {}, or run as a Lambda function named \
                 {{{ENV_PREFIX}}}-{{role}}",
                known()
            )));
        };
        logical_function(&prefix, &function)
            .and_then(Self::from_name)
            .ok_or_else(|| {
                RoleError(format!(
                    "the function {function:?} is not {{{prefix}}}-{{role}} for a role among {}; \
                     set {ENV_FUNCTION}",
                    known()
                ))
            })
    }

    pub fn from_env() -> Result<Self, RoleError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Api => "api",
            Self::Daemon => "daemon",
            Self::Sweeper => "sweeper",
            Self::Stage(function) => function.as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn every_function_of_the_deployment_has_a_role() {
        for name in FUNCTIONS {
            let role = Role::from_name(name).unwrap_or_else(|| panic!("{name} has no role"));
            assert_eq!(role.to_string(), *name);
        }
        assert_eq!(Role::from_name("bootstrap"), None);
    }

    #[test]
    fn the_role_comes_from_sluice_function_or_the_lambda_name() {
        assert_eq!(
            Role::from_lookup(env(&[(ENV_FUNCTION, "transform")])),
            Ok(Role::Stage(Function::Transform))
        );
        assert_eq!(
            Role::from_lookup(env(&[
                (ENV_LAMBDA_FUNCTION_NAME, "my-stack-sweeper"),
                (ENV_PREFIX, "my-stack")
            ])),
            Ok(Role::Sweeper)
        );
        // SLUICE_FUNCTION wins over the name.
        assert_eq!(
            Role::from_lookup(env(&[
                (ENV_FUNCTION, "api"),
                (ENV_LAMBDA_FUNCTION_NAME, "my-stack-daemon"),
                (ENV_PREFIX, "my-stack")
            ])),
            Ok(Role::Api)
        );
    }

    #[test]
    fn an_unknown_role_is_a_clear_error() {
        let e = Role::from_lookup(env(&[(ENV_FUNCTION, "mapper")])).unwrap_err();
        assert!(
            e.to_string().contains("\"mapper\" is not a function"),
            "{e}"
        );
        let e = Role::from_lookup(env(&[
            (ENV_LAMBDA_FUNCTION_NAME, "other-feed"),
            (ENV_PREFIX, "my-stack"),
        ]))
        .unwrap_err();
        assert!(e.to_string().contains("set SLUICE_FUNCTION"), "{e}");
        let e = Role::from_lookup(env(&[])).unwrap_err();
        assert!(e.to_string().contains("set SLUICE_FUNCTION"), "{e}");
    }
}
