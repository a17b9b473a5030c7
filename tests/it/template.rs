//! `template.yaml` against the code it deploys: the functions, their environment, the
//! daemon's mapping, state, the API's auth, alarms and IAM.
//!
//! cfn-lint (scripts/test) checks the template's syntax and CloudFormation resources, but
//! `AWS::Serverless::Function` properties only shallowly, and nothing about what the code
//! expects: that is checked here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use orchestration::aws::config::{
    AwsSettings, DEFAULT_CONCURRENCY_BUDGET, DEFAULT_JOB_DEADLINE_S, FUNCTIONS, OPTIONAL_ENV,
    REQUIRED_ENV,
};
use serde_json::{json, Map, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The functions that are not pipeline stages; every other one of `FUNCTIONS` is.
const CONTROL_FUNCTIONS: &[&str] = &["api", "daemon", "sweeper"];

/// Environment variables a function may have besides `REQUIRED_ENV` and `OPTIONAL_ENV`.
const EXTRA_ENV: &[&str] = &["RUST_LOG"];

/// The only actions an IAM statement may grant on `Resource: "*"`, because AWS defines no
/// resource for them:
/// - `sqs:ListQueues` lists the account's queues in the Region (the code filters by the
///   stack's name prefix);
/// - `lambda:CreateEventSourceMapping` (scoped instead by a `lambda:FunctionArn` condition,
///   checked below) and `lambda:ListEventSourceMappings`.
const STAR_RESOURCE_ACTIONS: &[&str] = &[
    "sqs:ListQueues",
    "lambda:CreateEventSourceMapping",
    "lambda:ListEventSourceMappings",
];

/// Kept in one place so every check reads the same file.
struct Template {
    doc: Value,
}

impl Template {
    fn load() -> Self {
        let path = Path::new(ROOT).join("template.yaml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
        Self {
            doc: to_json(&yaml),
        }
    }

    fn resource(&self, id: &str) -> &Value {
        &self.doc["Resources"][id]
    }

    /// `(logical id, resource)` of every resource of type `ty`, in name order.
    fn resources(&self, ty: &str) -> Vec<(&str, &Value)> {
        let mut out: Vec<(&str, &Value)> = self.doc["Resources"]
            .as_object()
            .expect("template.yaml has Resources")
            .iter()
            .filter(|(_, r)| r["Type"] == ty)
            .map(|(id, r)| (id.as_str(), r))
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out
    }

    /// The function's logical id for each of its role names: `FunctionName` is
    /// `!Sub "${AWS::StackName}-{role}"`, and the `bootstrap` picks its role from it.
    fn functions(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (id, f) in self.resources("AWS::Serverless::Function") {
            let role = f["Properties"]["FunctionName"]["Fn::Sub"]
                .as_str()
                .and_then(|name| name.strip_prefix("${AWS::StackName}-"))
                .unwrap_or_else(|| {
                    panic!(
                        "function {id}: FunctionName must be !Sub \"${{AWS::StackName}}-{{role}}\""
                    )
                });
            if let Some(other) = out.insert(role.to_owned(), id.to_owned()) {
                panic!("functions {other} and {id} both have the role {role}");
            }
        }
        out
    }

    /// A function property, falling back to `Globals.Function`.
    fn function_prop<'a>(&'a self, function: &'a Value, key: &str) -> &'a Value {
        match &function["Properties"][key] {
            Value::Null => &self.doc["Globals"]["Function"][key],
            v => v,
        }
    }

    /// A function's environment: `Globals.Function` merged with its own (SAM's rule).
    fn environment(&self, function: &Value) -> Map<String, Value> {
        let mut env = Map::new();
        for vars in [
            &self.doc["Globals"]["Function"]["Environment"]["Variables"],
            &function["Properties"]["Environment"]["Variables"],
        ] {
            if let Some(vars) = vars.as_object() {
                env.extend(vars.clone());
            }
        }
        env
    }

    /// A deployed value as a string, for parsing by the code: literals as they are,
    /// parameters by their default, the stack name as `sluice`, other references as a
    /// placeholder.
    fn resolve(&self, value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => match value["Ref"].as_str() {
                Some("AWS::StackName") => "sluice".to_owned(),
                Some(name) if self.doc["Parameters"][name].is_object() => {
                    self.resolve(&self.doc["Parameters"][name]["Default"])
                }
                _ => format!("resolved:{value}"),
            },
        }
    }

    fn number(&self, value: &Value) -> Option<f64> {
        self.resolve(value).parse().ok()
    }
}

/// CloudFormation's JSON form of the YAML: short tags become their long forms
/// (`!Ref X` → `{"Ref": "X"}`, `!Sub s` → `{"Fn::Sub": s}`, `!GetAtt A.B` →
/// `{"Fn::GetAtt": ["A", "B"]}`).
fn to_json(v: &serde_yaml_ng::Value) -> Value {
    use serde_yaml_ng::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                json!(i)
            } else if let Some(u) = n.as_u64() {
                json!(u)
            } else {
                json!(n.as_f64())
            }
        }
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(t) => {
            let tag = t.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let name = match tag {
                "Ref" | "Condition" => tag.to_owned(),
                other => format!("Fn::{other}"),
            };
            let mut inner = to_json(&t.value);
            if name == "Fn::GetAtt" {
                if let Value::String(s) = &inner {
                    if let Some((resource, attribute)) = s.split_once('.') {
                        inner = json!([resource, attribute]);
                    }
                }
            }
            json!({ name: inner })
        }
    }
}

/// A string or a list of strings (IAM's `Action`, `Resource`, ...), as a list of values.
fn one_or_many(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The logical id a `!Ref` or `!GetAtt` points at.
fn target(v: &Value) -> Option<&str> {
    v["Ref"].as_str().or_else(|| v["Fn::GetAtt"][0].as_str())
}

fn check(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "template.yaml has {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

#[test]
fn template_functions_are_the_deployments_functions() {
    let t = Template::load();
    let mut problems = Vec::new();
    let functions = t.functions();
    let in_template: BTreeSet<&str> = functions.keys().map(String::as_str).collect();
    let in_code: BTreeSet<&str> = FUNCTIONS.iter().copied().collect();
    if in_template != in_code {
        problems.push(format!(
            "its functions (by FunctionName) are {in_template:?}, \
             but orchestration::aws::config::FUNCTIONS is {in_code:?}"
        ));
    }
    // One build: every function runs the same binary with the same Metadata (SAM builds
    // functions with identical build definitions once).
    let bin = Path::new(ROOT).join("handlers/src/bin/bootstrap.rs");
    if !bin.is_file() {
        problems.push(format!("{} does not exist", bin.display()));
    }
    let metadata: BTreeSet<String> = functions
        .values()
        .map(|id| t.resource(id)["Metadata"].to_string())
        .collect();
    if metadata.len() != 1 {
        problems.push(format!(
            "the functions' Metadata differ, so SAM would build more than once: {metadata:?}"
        ));
    }
    for (name, id) in &functions {
        let f = t.resource(id);
        if f["Metadata"]["BuildProperties"]["Binary"] != "bootstrap" {
            problems.push(format!(
                "{id}: Metadata.BuildProperties.Binary must be bootstrap"
            ));
        }
        // The bootstrap takes its role from the function's name.
        let deployed = orchestration::aws::config::function_name("sluice", name);
        let role = handlers::role::Role::from_lookup(|var| match var {
            "AWS_LAMBDA_FUNCTION_NAME" => Some(deployed.clone()),
            "SLUICE_PREFIX" => Some("sluice".to_owned()),
            _ => None,
        });
        if role.as_ref().map(ToString::to_string).as_deref() != Ok(name.as_str()) {
            problems.push(format!(
                "{id}: the bootstrap takes the role {role:?}, not {name}"
            ));
        }
        if f["Metadata"]["BuildMethod"] != "rust-cargolambda" {
            problems.push(format!(
                "{id}: Metadata.BuildMethod must be rust-cargolambda, got {}",
                f["Metadata"]["BuildMethod"]
            ));
        }
        // cargo lambda runs in CodeUri and builds `--bin {Binary}`: CodeUri must be the
        // directory of the package that has the binaries.
        let code_uri = t.function_prop(f, "CodeUri").as_str().unwrap_or_default();
        let manifest = Path::new(ROOT).join(code_uri).join("Cargo.toml");
        let declares_handlers = std::fs::read_to_string(&manifest)
            .map(|m| m.contains("name = \"handlers\""))
            .unwrap_or(false);
        if !declares_handlers {
            problems.push(format!(
                "{id}: CodeUri {code_uri:?} must be the directory of the `handlers` package \
                 ({} does not declare it)",
                manifest.display()
            ));
        }
        for (key, want) in [
            ("Runtime", json!("provided.al2023")),
            ("Handler", json!("bootstrap")),
        ] {
            if t.function_prop(f, key) != &want {
                problems.push(format!(
                    "{id}: {key} must be {want}, got {}",
                    t.function_prop(f, key)
                ));
            }
        }
        if t.function_prop(f, "Architectures") != &json!(["arm64"]) {
            problems.push(format!(
                "{id}: Architectures must be [arm64], got {}",
                t.function_prop(f, "Architectures")
            ));
        }
        if !matches!(t.number(t.function_prop(f, "Timeout")), Some(s) if s > 0.0 && s <= 900.0) {
            problems.push(format!("{id}: Timeout must be 1 to 900 s"));
        }
        // The cost model bills each function at the memory the template gives it.
        let memory = t.number(t.function_prop(f, "MemorySize"));
        let modelled = f64::from(orchestration::cost::memory_mb(name));
        if memory != Some(modelled) {
            problems.push(format!(
                "{id}: MemorySize is {memory:?}, but the cost model (cost::memory_mb) bills \
                 {modelled} MB"
            ));
        }
    }
    check(problems);
}

#[test]
fn template_environment_is_what_the_functions_read() {
    let t = Template::load();
    let mut problems = Vec::new();
    let allowed: BTreeSet<&str> = REQUIRED_ENV
        .iter()
        .chain(OPTIONAL_ENV)
        .chain(EXTRA_ENV)
        .copied()
        .collect();
    let functions = t.functions();
    let stage_timeout = functions
        .iter()
        .filter(|(name, _)| !CONTROL_FUNCTIONS.contains(&name.as_str()))
        .filter_map(|(_, id)| t.number(t.function_prop(t.resource(id), "Timeout")))
        .fold(0.0, f64::max);
    for (name, id) in &functions {
        let env = t.environment(t.resource(id));
        for var in REQUIRED_ENV {
            if !env.contains_key(*var) {
                problems.push(format!("{id} ({name}): environment lacks {var}"));
            }
        }
        for var in env.keys() {
            if !allowed.contains(var.as_str()) && !var.starts_with("AWS_LAMBDA_") {
                problems.push(format!(
                    "{id} ({name}): environment variable {var} is not read by the code \
                     (config::REQUIRED_ENV / OPTIONAL_ENV)"
                ));
            }
        }
        if env.get("SLUICE_PREFIX") != Some(&json!({ "Ref": "AWS::StackName" })) {
            problems.push(format!(
                "{id} ({name}): SLUICE_PREFIX must be !Ref AWS::StackName (the functions' name prefix)"
            ));
        }
        // What the code makes of the deployed values (parameters at their defaults).
        let values: BTreeMap<&str, String> = env
            .iter()
            .map(|(k, v)| (k.as_str(), t.resolve(v)))
            .collect();
        match AwsSettings::from_lookup(|k| values.get(k).cloned()) {
            Err(e) => problems.push(format!("{id} ({name}): the code rejects it: {e}")),
            Ok(s) => {
                if (s.stage_visibility.as_secs() as f64) < 6.0 * stage_timeout {
                    problems.push(format!(
                        "{id} ({name}): stage visibility {} s is less than 6 x the stage \
                         functions' timeout {stage_timeout} s",
                        s.stage_visibility.as_secs()
                    ));
                }
                if s.max_receive_count < 5 {
                    problems.push(format!(
                        "{id} ({name}): max receive count {} is below AWS's recommended 5",
                        s.max_receive_count
                    ));
                }
            }
        }
    }
    let defaults = [
        ("ConcurrencyBudget", DEFAULT_CONCURRENCY_BUDGET as u64),
        ("JobDeadlineSeconds", DEFAULT_JOB_DEADLINE_S),
    ];
    for (param, want) in defaults {
        if t.number(&t.doc["Parameters"][param]["Default"]) != Some(want as f64) {
            problems.push(format!(
                "parameter {param} must default to {want} (the code's default)"
            ));
        }
    }
    if !t.doc["Parameters"]["AlarmEmail"].is_object() {
        problems.push("parameter AlarmEmail is missing".into());
    }
    check(problems);
}

/// The SQS mappings the template declares, as `(function logical id, queue ref, properties)`:
/// `AWS::Lambda::EventSourceMapping` resources and SAM `SQS` events alike.
fn sqs_mappings(t: &Template) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    for (_, m) in t.resources("AWS::Lambda::EventSourceMapping") {
        let props = &m["Properties"];
        if let Some(function) = target(&props["FunctionName"]) {
            out.push((
                function.to_owned(),
                props["EventSourceArn"].clone(),
                props.clone(),
            ));
        }
    }
    for (id, f) in t.resources("AWS::Serverless::Function") {
        if let Some(events) = f["Properties"]["Events"].as_object() {
            for event in events.values().filter(|e| e["Type"] == "SQS") {
                let props = &event["Properties"];
                out.push((id.to_owned(), props["Queue"].clone(), props.clone()));
            }
        }
    }
    out
}

#[test]
fn template_daemon_is_fed_by_the_control_queue() {
    let t = Template::load();
    let mut problems = Vec::new();
    let functions = t.functions();
    let daemon = &functions["daemon"];
    let mappings = sqs_mappings(&t);
    let daemon_mappings: Vec<_> = mappings.iter().filter(|(f, _, _)| f == daemon).collect();
    for (f, _, _) in mappings.iter().filter(|(f, _, _)| f != daemon) {
        problems.push(format!(
            "{f} has an SQS mapping in the template; only the daemon's is static \
             (the daemon maps job queues to the stage functions at run time)"
        ));
    }
    let [(_, source, props)] = daemon_mappings.as_slice() else {
        problems.push(format!(
            "the daemon ({daemon}) must have exactly one SQS mapping, has {}",
            daemon_mappings.len()
        ));
        return check(problems);
    };
    let types = one_or_many(&props["FunctionResponseTypes"]);
    if !types.contains(&&json!("ReportBatchItemFailures")) {
        problems.push(
            "the daemon's mapping lacks FunctionResponseTypes: [ReportBatchItemFailures]".into(),
        );
    }
    match t.number(&props["ScalingConfig"]["MaximumConcurrency"]) {
        Some(n) if (2.0..=1000.0).contains(&n) => {}
        other => problems.push(format!(
            "the daemon's mapping needs ScalingConfig.MaximumConcurrency from 2 to 1,000, got {other:?}"
        )),
    }
    match t.number(&props["BatchSize"]) {
        Some(n) if (1.0..=10.0).contains(&n) => {}
        other => problems.push(format!(
            "the daemon's mapping needs a BatchSize from 1 to 10 (no batching window), got {other:?}"
        )),
    }
    let Some(queue_id) = target(source) else {
        problems.push(format!(
            "the daemon's mapping reads {source}, not a queue of the template"
        ));
        return check(problems);
    };
    let queue = &t.resource(queue_id)["Properties"];
    if t.environment(t.resource(daemon))
        .get("SLUICE_CONTROL_QUEUE_URL")
        != Some(&json!({ "Ref": queue_id }))
    {
        problems.push(format!(
            "SLUICE_CONTROL_QUEUE_URL must be !Ref {queue_id}, the queue the daemon's mapping reads"
        ));
    }
    if queue["QueueName"] != json!({ "Fn::Sub": "${AWS::StackName}-control" }) {
        problems.push(format!(
            "{queue_id}: QueueName must be !Sub \"${{AWS::StackName}}-control\", got {}",
            queue["QueueName"]
        ));
    }
    let daemon_timeout = t
        .number(t.function_prop(t.resource(daemon), "Timeout"))
        .unwrap_or(f64::INFINITY);
    match t.number(&queue["VisibilityTimeout"]) {
        Some(v) if v >= 6.0 * daemon_timeout => {}
        other => problems.push(format!(
            "{queue_id}: VisibilityTimeout {other:?} must be at least 6 x the daemon's \
             timeout ({daemon_timeout} s)"
        )),
    }
    let redrive = &queue["RedrivePolicy"];
    match t.number(&redrive["maxReceiveCount"]) {
        Some(n) if (1.0..=1000.0).contains(&n) => {}
        other => problems.push(format!(
            "{queue_id}: RedrivePolicy.maxReceiveCount must be 1 to 1,000, got {other:?}"
        )),
    }
    match target(&redrive["deadLetterTargetArn"]) {
        Some(dlq) if t.resource(dlq)["Type"] == "AWS::SQS::Queue" => {
            if t.number(&t.resource(dlq)["Properties"]["MessageRetentionPeriod"])
                != Some(1_209_600.0)
            {
                problems.push(format!(
                    "{dlq}: keep dead ticks 14 days (MessageRetentionPeriod 1209600)"
                ));
            }
        }
        _ => problems.push(format!(
            "{queue_id}: RedrivePolicy needs a dead-letter queue of the template"
        )),
    }
    check(problems);
}

#[test]
fn template_state_is_durable_and_private() {
    let t = Template::load();
    let mut problems = Vec::new();
    let tables = t.resources("AWS::DynamoDB::Table");
    if tables.len() != 1 {
        problems.push(format!(
            "expected one DynamoDB table, found {}",
            tables.len()
        ));
    }
    for (id, table) in tables {
        let p = &table["Properties"];
        let keys: BTreeSet<(String, String)> = one_or_many(&p["KeySchema"])
            .iter()
            .map(|k| (k["AttributeName"].to_string(), k["KeyType"].to_string()))
            .collect();
        let want: BTreeSet<(String, String)> = [("pk", "HASH"), ("sk", "RANGE")]
            .iter()
            .map(|(a, k)| (json!(a).to_string(), json!(k).to_string()))
            .collect();
        if keys != want {
            problems.push(format!("{id}: KeySchema must be pk (HASH) and sk (RANGE)"));
        }
        for attr in one_or_many(&p["AttributeDefinitions"]) {
            if attr["AttributeType"] != "S" {
                problems.push(format!(
                    "{id}: key {} must be a string (S)",
                    attr["AttributeName"]
                ));
            }
        }
        if p["BillingMode"] != "PAY_PER_REQUEST" {
            problems.push(format!("{id}: BillingMode must be PAY_PER_REQUEST"));
        }
        if p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] != true {
            problems.push(format!("{id}: point-in-time recovery must be enabled"));
        }
        if p["SSESpecification"]["SSEEnabled"] != true {
            problems.push(format!("{id}: SSESpecification.SSEEnabled must be true"));
        }
        if p["TimeToLiveSpecification"] != json!({"AttributeName": "expires_at", "Enabled": true}) {
            problems.push(format!("{id}: TTL must be enabled on expires_at"));
        }
    }
    let buckets = t.resources("AWS::S3::Bucket");
    if buckets.len() != 1 {
        problems.push(format!("expected one S3 bucket, found {}", buckets.len()));
    }
    for (id, bucket) in buckets {
        let p = &bucket["Properties"];
        let block = &p["PublicAccessBlockConfiguration"];
        for key in [
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        ] {
            if block[key] != true {
                problems.push(format!(
                    "{id}: PublicAccessBlockConfiguration.{key} must be true"
                ));
            }
        }
        let sse = &p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
            ["ServerSideEncryptionByDefault"]["SSEAlgorithm"];
        if !sse.is_string() {
            problems.push(format!(
                "{id}: BucketEncryption must set a default SSEAlgorithm"
            ));
        }
        let rules = one_or_many(&p["LifecycleConfiguration"]["Rules"]);
        let expires_payloads = rules.iter().any(|r| {
            r["Status"] == "Enabled"
                && (r["Prefix"] == "payloads/" || r["Filter"]["Prefix"] == "payloads/")
                && r["ExpirationInDays"].is_number()
        });
        if !expires_payloads {
            problems.push(format!(
                "{id}: needs an enabled lifecycle rule expiring payloads/ (claim-checks)"
            ));
        }
        let env_bucket = json!({ "Ref": id });
        if t.doc["Globals"]["Function"]["Environment"]["Variables"]["SLUICE_BUCKET"] != env_bucket {
            problems.push(format!("Globals: SLUICE_BUCKET must be !Ref {id}"));
        }
    }
    check(problems);
}

/// Every queue and topic is encrypted explicitly; the topic's key lets CloudWatch alarms
/// publish; every log group (each function's, the API's access log) has a retention and
/// the stack's key; no function or API logs to a group the template does not declare (it
/// would be created on first write, unencrypted and never expiring).
#[test]
fn template_encrypts_queues_topics_and_logs_and_logs_expire() {
    let t = Template::load();
    let mut problems = Vec::new();
    for (id, queue) in t.resources("AWS::SQS::Queue") {
        let p = &queue["Properties"];
        if p["KmsMasterKeyId"].is_null() && p["SqsManagedSseEnabled"] != true {
            problems.push(format!(
                "{id}: needs KmsMasterKeyId or SqsManagedSseEnabled: true"
            ));
        }
    }
    let topics = t.resources("AWS::SNS::Topic");
    if topics.is_empty() {
        problems.push("no SNS topic for the alarms".into());
    }
    for (id, topic) in topics {
        let key = &topic["Properties"]["KmsMasterKeyId"];
        let Some(key_id) = target(key) else {
            problems.push(format!("{id}: KmsMasterKeyId must reference the stack's KMS key (CloudWatch cannot use the AWS managed key for SNS)"));
            continue;
        };
        let key = t.resource(key_id);
        if key["Type"] != "AWS::KMS::Key" {
            problems.push(format!("{id}: {key_id} is not an AWS::KMS::Key"));
            continue;
        }
        if key["Properties"]["EnableKeyRotation"] != true {
            problems.push(format!("{key_id}: EnableKeyRotation must be true"));
        }
        let mut grants = Vec::new();
        statements(&key["Properties"]["KeyPolicy"], &mut grants);
        let alarms_may_publish = grants.iter().any(|s| {
            s["Effect"] == "Allow"
                && s["Principal"]["Service"] == "cloudwatch.amazonaws.com"
                && ["kms:Decrypt", "kms:GenerateDataKey*"]
                    .iter()
                    .all(|a| one_or_many(&s["Action"]).contains(&&json!(a)))
        });
        if !alarms_may_publish {
            problems.push(format!(
                "{key_id}: the key policy must let cloudwatch.amazonaws.com Decrypt and GenerateDataKey*"
            ));
        }
    }
    let log_groups: BTreeSet<&str> = t
        .resources("AWS::Logs::LogGroup")
        .into_iter()
        .map(|(id, group)| {
            let p = &group["Properties"];
            if t.number(&p["RetentionInDays"]).is_none() {
                problems.push(format!("{id}: RetentionInDays is required"));
            }
            if p["KmsKeyId"].is_null() {
                problems.push(format!("{id}: KmsKeyId is required"));
            }
            id
        })
        .collect();
    let logs_to_declared_group = |v: &Value| target(v).is_some_and(|g| log_groups.contains(g));
    for (id, function) in t.resources("AWS::Serverless::Function") {
        if !logs_to_declared_group(&function["Properties"]["LoggingConfig"]["LogGroup"]) {
            problems.push(format!(
                "{id}: LoggingConfig.LogGroup must be a log group of the template"
            ));
        }
    }
    for (id, api) in t.resources("AWS::Serverless::HttpApi") {
        let access = &api["Properties"]["AccessLogSettings"];
        if !logs_to_declared_group(&access["DestinationArn"]) || !access["Format"].is_string() {
            problems.push(format!(
                "{id}: AccessLogSettings needs a Format and a DestinationArn in the template"
            ));
        }
    }
    check(problems);
}

#[test]
fn template_api_is_iam_authorised_and_outputs_are_there() {
    let t = Template::load();
    let mut problems = Vec::new();
    let apis = t.resources("AWS::Serverless::HttpApi");
    if apis.is_empty() {
        problems.push("no AWS::Serverless::HttpApi".into());
    }
    for (id, api) in &apis {
        let auth = &api["Properties"]["Auth"];
        if auth["DefaultAuthorizer"] != "AWS_IAM" || auth["EnableIamAuthorizer"] != true {
            problems.push(format!(
                "{id}: Auth needs EnableIamAuthorizer: true and DefaultAuthorizer: AWS_IAM"
            ));
        }
    }
    let functions = t.functions();
    for (name, id) in &functions {
        let events = t.resource(id)["Properties"]["Events"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        let http: Vec<&Value> = events
            .values()
            .filter(|e| e["Type"] == "HttpApi" || e["Type"] == "Api")
            .collect();
        if name == "api" {
            if http.is_empty() {
                problems.push(format!("{id}: the api function has no HttpApi events"));
            }
            for e in http {
                let on_our_api = target(&e["Properties"]["ApiId"])
                    .is_some_and(|a| apis.iter().any(|(id, _)| *id == a));
                if e["Type"] != "HttpApi" || !on_our_api {
                    problems.push(format!(
                        "{id}: every route must be on the template's HttpApi"
                    ));
                }
                if e["Properties"]["Auth"]["Authorizer"] == "NONE" {
                    problems.push(format!("{id}: a route turns IAM auth off"));
                }
            }
        } else if !http.is_empty() {
            problems.push(format!("{id} ({name}) must not be reachable over HTTP"));
        }
    }
    // What `--stack NAME` reads (src/stack.rs).
    for output in ["ApiUrl", "Bucket", "Table", "ControlQueueUrl"] {
        if t.doc["Outputs"][output]["Value"].is_null() {
            problems.push(format!("output {output} is missing"));
        }
    }
    check(problems);
}

/// The metrics an alarm watches: its own, or those of its metric-math expression.
fn alarm_metrics(alarm: &Value) -> Vec<&Value> {
    let p = &alarm["Properties"];
    if p["MetricName"].is_string() {
        return vec![p];
    }
    one_or_many(&p["Metrics"])
        .into_iter()
        .map(|m| &m["MetricStat"]["Metric"])
        .filter(|m| m.is_object())
        .collect()
}

fn dimension<'a>(metric: &'a Value, name: &str) -> Option<&'a Value> {
    one_or_many(&metric["Dimensions"])
        .into_iter()
        .find(|d| d["Name"] == name)
        .map(|d| &d["Value"])
}

#[test]
fn template_alarms_cover_failures_and_notify_the_topic() {
    let t = Template::load();
    let mut problems = Vec::new();
    let topics: BTreeSet<&str> = t
        .resources("AWS::SNS::Topic")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let alarms = t.resources("AWS::CloudWatch::Alarm");
    for (id, alarm) in &alarms {
        let actions = one_or_many(&alarm["Properties"]["AlarmActions"]);
        if actions.is_empty()
            || !actions
                .iter()
                .all(|a| target(a).is_some_and(|a| topics.contains(a)))
        {
            problems.push(format!(
                "alarm {id}: AlarmActions must notify the template's SNS topic"
            ));
        }
    }
    let watched: Vec<&Value> = alarms.iter().flat_map(|(_, a)| alarm_metrics(a)).collect();
    let watches = |namespace: &str, metric: &str, dim: &str, value: &Value| {
        watched.iter().any(|m| {
            m["Namespace"] == namespace
                && m["MetricName"] == metric
                && dimension(m, dim) == Some(value)
        })
    };
    // The control dead-letter queue: ticks that failed maxReceiveCount times.
    let control_dlq = sqs_mappings(&t)
        .iter()
        .filter_map(|(_, source, _)| target(source))
        .filter_map(|q| {
            target(&t.resource(q)["Properties"]["RedrivePolicy"]["deadLetterTargetArn"])
        })
        .next()
        .map(str::to_owned);
    match control_dlq {
        Some(dlq) => {
            if !watches(
                "AWS/SQS",
                "ApproximateNumberOfMessagesVisible",
                "QueueName",
                &json!({ "Fn::GetAtt": [dlq, "QueueName"] }),
            ) {
                problems.push(format!(
                    "no alarm on messages in the control dead-letter queue {dlq}"
                ));
            }
        }
        None => problems.push("no control dead-letter queue to alarm on".into()),
    }
    // The daemon's EMF metrics.
    for metric in ["DeadLetterMessages", "JobsOverdue"] {
        if !watches(
            "Sluice",
            metric,
            "Stack",
            &json!({ "Ref": "AWS::StackName" }),
        ) {
            problems.push(format!(
                "no alarm on the daemon's {metric} metric (namespace Sluice, dimension Stack = stack name)"
            ));
        }
    }
    // Lambda errors of every function, throttles of every stage function.
    for (name, id) in t.functions() {
        let function = json!({ "Ref": id });
        if !watches("AWS/Lambda", "Errors", "FunctionName", &function) {
            problems.push(format!("no alarm on Errors of {id} ({name})"));
        }
        if !CONTROL_FUNCTIONS.contains(&name.as_str())
            && !watches("AWS/Lambda", "Throttles", "FunctionName", &function)
        {
            problems.push(format!(
                "no alarm on Throttles of stage function {id} ({name})"
            ));
        }
    }
    let email = t
        .resources("AWS::SNS::Subscription")
        .into_iter()
        .any(|(_, s)| {
            s["Properties"]["Endpoint"] == json!({ "Ref": "AlarmEmail" })
                && s["Condition"].is_string()
        });
    if !email {
        problems.push("no conditional email subscription for the AlarmEmail parameter".into());
    }
    check(problems);
}

/// Every object with a `Statement` list: IAM policies wherever they are (managed policies,
/// function `Policies`, bucket policies).
fn statements(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(list)) = m.get("Statement") {
                out.extend(list.iter().cloned());
            }
            m.values().for_each(|v| statements(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| statements(v, out)),
        _ => {}
    }
}

#[test]
fn template_iam_is_least_privilege() {
    let t = Template::load();
    let mut problems = Vec::new();
    let mut all = Vec::new();
    statements(&t.doc["Resources"], &mut all);
    // The roles' statements. A resource policy names its principal, and there `Resource:
    // "*"` means the resource itself (the KMS key's policy): checked where it is used.
    let allows: Vec<&Value> = all
        .iter()
        .filter(|s| s["Effect"] == "Allow" && s["Principal"].is_null())
        .collect();
    if allows.is_empty() {
        problems.push("found no IAM statements".into());
    }
    for s in allows {
        let sid = s["Sid"].as_str().unwrap_or("(no Sid)");
        let actions: Vec<&str> = one_or_many(&s["Action"])
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        if actions.is_empty() || s["NotAction"].is_string() || s["NotAction"].is_array() {
            problems.push(format!("statement {sid}: needs an explicit Action list"));
        }
        for a in &actions {
            if a.contains('*') {
                problems.push(format!("statement {sid}: wildcard action {a}"));
            }
        }
        let resources = one_or_many(&s["Resource"]);
        if resources.is_empty() {
            problems.push(format!("statement {sid}: needs an explicit Resource"));
        }
        if resources.iter().any(|r| *r == "*") {
            for a in &actions {
                if !STAR_RESOURCE_ACTIONS.contains(a) {
                    problems.push(format!(
                        "statement {sid}: {a} on Resource \"*\" (allowed only for {STAR_RESOURCE_ACTIONS:?})"
                    ));
                }
            }
        }
        // Scoped to this stack: queue and function ARNs carry the stack's name prefix.
        for r in &resources {
            if let Some(arn) = r["Fn::Sub"].as_str() {
                let scoped_kind = arn.contains(":sqs:") || arn.contains(":function:");
                if scoped_kind && !arn.contains("${AWS::StackName}-") {
                    problems.push(format!(
                        "statement {sid}: {arn} is not scoped to the stack's names"
                    ));
                }
            }
        }
        let mapping_writes = [
            "lambda:CreateEventSourceMapping",
            "lambda:UpdateEventSourceMapping",
            "lambda:DeleteEventSourceMapping",
        ];
        if actions.iter().any(|a| mapping_writes.contains(a)) {
            let arns = one_or_many(&s["Condition"]["StringLike"]["lambda:FunctionArn"])
                .into_iter()
                .chain(one_or_many(
                    &s["Condition"]["StringEquals"]["lambda:FunctionArn"],
                ))
                .filter_map(|a| a["Fn::Sub"].as_str())
                .collect::<Vec<_>>();
            if arns.is_empty() || !arns.iter().all(|a| a.contains("${AWS::StackName}-")) {
                problems.push(format!(
                    "statement {sid}: event-source-mapping writes need a lambda:FunctionArn \
                     condition naming the stack's functions"
                ));
            }
        }
    }
    // No broad AWS managed policies by name (e.g. AmazonSQSFullAccess).
    for (id, f) in t.resources("AWS::Serverless::Function") {
        for p in one_or_many(&f["Properties"]["Policies"]) {
            if let Some(name) = p.as_str() {
                problems.push(format!(
                    "{id}: policy {name} by name; grant scoped statements instead"
                ));
            }
        }
        if f["Properties"]["Policies"].is_null() && f["Properties"]["Role"].is_null() {
            problems.push(format!("{id}: no Policies (and no Role)"));
        }
    }
    check(problems);
}
