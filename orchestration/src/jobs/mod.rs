//! The job types sluice ships. Each is a parameter schema plus a flow of components.

pub mod fire_tweets;
mod wordcount;

pub use fire_tweets::FireTweets;
pub use wordcount::Wordcount;

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use crate::flow::Registry;

    /// Each job type's schema names exactly the fields its validation accepts: every example
    /// validates, the normalized params hold only schema properties, and every property is
    /// accepted by some example.
    #[test]
    fn schemas_name_the_fields_validation_accepts() {
        let examples = [
            (
                "wordcount",
                vec![
                    json!({"messages": 10, "text": "a b", "partition_size": 5, "per_word": true, "contains": "a"}),
                    json!({"input": "text/", "range_bytes": 2048}),
                    json!({"input": "text/", "per_word": true, "reduce_partitions": 4}),
                ],
            ),
            (
                "fire-tweets",
                vec![
                    json!({"country": "GB", "from": "2018-11-01", "to": "2018-11-01", "keywords": ["fire"], "partition_bytes": 4096,
                           "include_retweets": false, "allow_missing_days": true}),
                ],
            ),
        ];
        let registry = Registry::default();
        // The built-in types (pipelines are checked by `pipeline::tests`).
        let schemas: Vec<_> = registry
            .schemas()
            .into_iter()
            .filter(|(n, _)| ["wordcount", "fire-tweets"].contains(n))
            .collect();
        assert_eq!(
            schemas.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            examples.iter().map(|(n, _)| *n).collect::<Vec<_>>()
        );
        for ((name, schema), (_, params)) in schemas.iter().zip(&examples) {
            let properties = schema["properties"].as_object().unwrap();
            let mut seen = std::collections::BTreeSet::new();
            for p in params {
                let normalized = registry.get(name).unwrap().normalize(p).unwrap();
                for key in normalized.as_object().unwrap().keys() {
                    assert!(
                        properties.contains_key(key),
                        "{name}: {key} not in the schema"
                    );
                    seen.insert(key.clone());
                }
            }
            let all: std::collections::BTreeSet<String> = properties.keys().cloned().collect();
            assert_eq!(seen, all, "{name}: schema properties no example exercises");
            for (field, property) in properties {
                let kind = property["type"].as_str().unwrap();
                assert!(
                    ["integer", "string", "boolean", "array"].contains(&kind),
                    "{name}.{field}: a form cannot show {kind}"
                );
                if let Some(default) = property.get("default") {
                    let accepted = params.iter().any(|p| {
                        let mut p = p.clone();
                        p[field] = default.clone();
                        registry.get(name).unwrap().normalize(&p).is_ok()
                    });
                    assert!(accepted, "{name}.{field}: default {default} is refused");
                }
            }
            assert_eq!(schema["additionalProperties"], Value::Bool(false));
        }
    }
}
