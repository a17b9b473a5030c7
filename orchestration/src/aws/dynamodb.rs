//! [`JobStore`] over an Amazon DynamoDB table.
//!
//! Item layout: the key attributes `pk` and `sk` (both strings), the version `v` (a number
//! the store increments on every write) and the caller's attributes as one map `a`, in
//! DynamoDB's native types so that the console shows them readably. Every write is an
//! `UpdateItem` (or a transaction `Update`) of the form `SET v = if_not_exists(v, 0) + 1,
//! a = :a`: the version is bumped atomically, with no read before the write, and the item's
//! previous attributes are replaced whole, as a put replaces them.
//!
//! DynamoDB's limits are checked here before a request is sent ([`limits`], counting the
//! item as stored), so they fail exactly as on the embedded store; DynamoDB's own
//! refusal of an item's size is reported the same way.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, ReturnValue, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use serde_json::{Map, Number, Value};

use crate::ports::{
    limits, Attributes, Condition, Item, JobStore, Key, Measure, Oversize, Page, StoreError, TxOp,
};

const PK: &str = "pk";
const SK: &str = "sk";
const VERSION: &str = "v";
const ATTRS: &str = "a";
const SET_ITEM: &str = "SET #v = if_not_exists(#v, :zero) + :one, #a = :a";

pub struct DynamoDbJobStore {
    client: Client,
    table: String,
}

/// JSON → DynamoDB: null, bool, number (as its decimal text), string, list, map.
pub fn to_attr(value: &Value) -> AttributeValue {
    match value {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_attr).collect()),
        Value::Object(map) => AttributeValue::M(to_attrs(map)),
    }
}

fn to_attrs(map: &Map<String, Value>) -> HashMap<String, AttributeValue> {
    map.iter().map(|(k, v)| (k.clone(), to_attr(v))).collect()
}

/// DynamoDB → JSON, the inverse of [`to_attr`]. Numbers come back as integers when they
/// are whole and fit, else as floats.
pub fn from_attr(value: &AttributeValue) -> Result<Value, StoreError> {
    Ok(match value {
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::N(n) => Value::Number(parse_number(n)?),
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::L(items) => {
            Value::Array(items.iter().map(from_attr).collect::<Result<_, _>>()?)
        }
        AttributeValue::M(map) => Value::Object(from_attrs(map)?),
        other => {
            return Err(StoreError::Backend(format!(
                "unsupported attribute type: {other:?}"
            )))
        }
    })
}

fn from_attrs(map: &HashMap<String, AttributeValue>) -> Result<Map<String, Value>, StoreError> {
    map.iter()
        .map(|(k, v)| Ok((k.clone(), from_attr(v)?)))
        .collect()
}

fn parse_number(n: &str) -> Result<Number, StoreError> {
    if let Ok(i) = n.parse::<i64>() {
        return Ok(i.into());
    }
    if let Ok(u) = n.parse::<u64>() {
        return Ok(u.into());
    }
    n.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .ok_or_else(|| StoreError::Backend(format!("unreadable number {n:?}")))
}

fn key_attrs(key: &Key) -> HashMap<String, AttributeValue> {
    HashMap::from([
        (PK.to_owned(), AttributeValue::S(key.pk.clone())),
        (SK.to_owned(), AttributeValue::S(key.sk.clone())),
    ])
}

/// A condition as an expression, with the names and values it uses.
struct Expr {
    condition: Option<String>,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

fn condition_expr(condition: Condition) -> Expr {
    let mut names = HashMap::from([("#pk".to_owned(), PK.to_owned())]);
    let mut values = HashMap::new();
    let condition = match condition {
        Condition::Always => None,
        Condition::NotExists => Some("attribute_not_exists(#pk)".to_owned()),
        Condition::Exists => Some("attribute_exists(#pk)".to_owned()),
        Condition::VersionIs(v) => {
            names.insert("#v".into(), VERSION.into());
            values.insert(":expected".into(), AttributeValue::N(v.to_string()));
            Some("attribute_exists(#pk) AND #v = :expected".to_owned())
        }
    };
    if condition.is_none() {
        names.clear();
    }
    Expr {
        condition,
        names,
        values,
    }
}

/// The expression of a write: the version bump and the new attributes, under `condition`.
fn write_expr(attrs: &Attributes, condition: Condition) -> Expr {
    let mut e = condition_expr(condition);
    e.names.insert("#v".into(), VERSION.into());
    e.names.insert("#a".into(), ATTRS.into());
    e.values
        .insert(":zero".into(), AttributeValue::N("0".into()));
    e.values
        .insert(":one".into(), AttributeValue::N("1".into()));
    e.values
        .insert(":a".into(), AttributeValue::M(to_attrs(attrs)));
    e
}

fn some_if_any<K, V>(map: HashMap<K, V>) -> Option<HashMap<K, V>> {
    (!map.is_empty()).then_some(map)
}

fn backend<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match e.code() {
        Some("ValidationException") => {
            StoreError::Invalid(format!("{what}: {}", DisplayErrorContext(&e)))
        }
        _ => StoreError::Backend(format!("{what}: {}", DisplayErrorContext(&e))),
    }
}

/// DynamoDB's words when an item would exceed its size limit: `PutItem`'s and
/// `UpdateItem`'s (a transaction's `Update` says the latter).
const ITEM_TOO_LARGE: [&str; 2] = [
    "Item size has exceeded the maximum allowed size",
    "Item size to update has exceeded the maximum allowed size",
];

/// Whether DynamoDB refused a write because an item would exceed 400 KB by its own count.
fn item_too_large(code: Option<&str>, message: Option<&str>) -> bool {
    matches!(code, Some("ValidationException" | "ValidationError"))
        && message.is_some_and(|m| ITEM_TOO_LARGE.iter().any(|words| m.contains(words)))
}

/// What to report when DynamoDB refuses an item we measured within the limit: the item,
/// our count of it, and the limit.
fn refused_item(key: &Key, attrs: &Attributes) -> StoreError {
    StoreError::TooLarge(Oversize {
        what: format!("item {}/{} (by DynamoDB's count)", key.pk, key.sk),
        size: limits::item_size(key, limits::WRITE_VERSION, attrs) as u64,
        limit: limits::MAX_ITEM_BYTES as u64,
        measure: Measure::Bytes,
    })
}

fn item_from(map: &HashMap<String, AttributeValue>) -> Result<Item, StoreError> {
    let text = |name: &str| match map.get(name) {
        Some(AttributeValue::S(s)) => Ok(s.clone()),
        _ => Err(StoreError::Backend(format!("item without string {name}"))),
    };
    let version = match map.get(VERSION) {
        Some(AttributeValue::N(n)) => n
            .parse()
            .map_err(|_| StoreError::Backend(format!("unreadable version {n:?}")))?,
        _ => 0,
    };
    let attrs = match map.get(ATTRS) {
        Some(AttributeValue::M(m)) => from_attrs(m)?,
        _ => Map::new(),
    };
    Ok(Item {
        key: Key::new(text(PK)?, text(SK)?),
        version,
        attrs,
    })
}

impl DynamoDbJobStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn tx_item(&self, op: &TxOp) -> Result<TransactWriteItem, StoreError> {
        let invalid = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Invalid(e.to_string());
        Ok(match op {
            TxOp::Put {
                key,
                attrs,
                condition,
            } => {
                let e = write_expr(attrs, *condition);
                let update = Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .update_expression(SET_ITEM)
                    .set_condition_expression(e.condition)
                    .set_expression_attribute_names(some_if_any(e.names))
                    .set_expression_attribute_values(some_if_any(e.values))
                    .build()
                    .map_err(invalid)?;
                TransactWriteItem::builder().update(update).build()
            }
            TxOp::Delete { key, condition } => {
                let e = condition_expr(*condition);
                let delete = Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .set_condition_expression(e.condition)
                    .set_expression_attribute_names(some_if_any(e.names))
                    .set_expression_attribute_values(some_if_any(e.values))
                    .build()
                    .map_err(invalid)?;
                TransactWriteItem::builder().delete(delete).build()
            }
            TxOp::Check { key, condition } => {
                let e = condition_expr(*condition);
                let Some(expression) = e.condition else {
                    // DynamoDB needs a condition; `Always` holds for any item.
                    let check = ConditionCheck::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_attrs(key)))
                        .condition_expression("attribute_exists(#pk) OR attribute_not_exists(#pk)")
                        .expression_attribute_names("#pk", PK)
                        .build()
                        .map_err(invalid)?;
                    return Ok(TransactWriteItem::builder().condition_check(check).build());
                };
                let check = ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_attrs(key)))
                    .condition_expression(expression)
                    .set_expression_attribute_names(some_if_any(e.names))
                    .set_expression_attribute_values(some_if_any(e.values))
                    .build()
                    .map_err(invalid)?;
                TransactWriteItem::builder().condition_check(check).build()
            }
        })
    }
}

#[async_trait]
impl JobStore for DynamoDbJobStore {
    async fn get(&self, key: &Key) -> Result<Option<Item>, StoreError> {
        limits::check_key(key).map_err(StoreError::TooLarge)?;
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        out.item.as_ref().map(item_from).transpose()
    }

    async fn put(
        &self,
        key: &Key,
        attrs: Attributes,
        condition: Condition,
    ) -> Result<u64, StoreError> {
        limits::check_item(key, &attrs).map_err(StoreError::TooLarge)?;
        let e = write_expr(&attrs, condition);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .update_expression(SET_ITEM)
            .set_condition_expression(e.condition)
            .set_expression_attribute_names(some_if_any(e.names))
            .set_expression_attribute_values(some_if_any(e.values))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => match out.attributes.as_ref().and_then(|a| a.get(VERSION)) {
                Some(AttributeValue::N(n)) => n
                    .parse()
                    .map_err(|_| StoreError::Backend(format!("unreadable version {n:?}"))),
                _ => Err(StoreError::Backend("UpdateItem returned no version".into())),
            },
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(StoreError::ConditionFailed(key.clone()))
            }
            Err(e) if item_too_large(e.code(), e.message()) => Err(refused_item(key, &attrs)),
            Err(e) => Err(backend("UpdateItem", e)),
        }
    }

    async fn delete(&self, key: &Key, condition: Condition) -> Result<(), StoreError> {
        limits::check_key(key).map_err(StoreError::TooLarge)?;
        let e = condition_expr(condition);
        match self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_attrs(key)))
            .set_condition_expression(e.condition)
            .set_expression_attribute_names(some_if_any(e.names))
            .set_expression_attribute_values(some_if_any(e.values))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("ConditionalCheckFailedException") => {
                Err(StoreError::ConditionFailed(key.clone()))
            }
            Err(e) => Err(backend("DeleteItem", e)),
        }
    }

    async fn transact(&self, ops: Vec<TxOp>) -> Result<(), StoreError> {
        if ops.is_empty() {
            // DynamoDB requires at least one item.
            return Err(StoreError::Invalid("empty transaction".into()));
        }
        limits::check_transaction(&ops).map_err(StoreError::TooLarge)?;
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = ops.iter().map(TxOp::key).find(|k| !seen.insert(*k)) {
            return Err(StoreError::Invalid(format!(
                "{}/{} appears twice in one transaction",
                dup.pk, dup.sk
            )));
        }
        let items = ops
            .iter()
            .map(|op| self.tx_item(op))
            .collect::<Result<Vec<_>, _>>()?;
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(c) => {
                    let reasons = c.cancellation_reasons();
                    let refused = reasons
                        .iter()
                        .position(|r| item_too_large(r.code(), r.message()));
                    if let Some(TxOp::Put { key, attrs, .. }) = refused.and_then(|i| ops.get(i)) {
                        return Err(refused_item(key, attrs));
                    }
                    // A conflict with a concurrent transaction (`TransactionConflict`) fails
                    // no condition: the caller re-reads and tries again, as after a race.
                    let failed = (0..ops.len())
                        .map(|i| {
                            reasons
                                .get(i)
                                .and_then(|r| r.code())
                                .is_some_and(|c| c == "ConditionalCheckFailed")
                        })
                        .collect();
                    Err(StoreError::TransactionCanceled { failed })
                }
                other if item_too_large(other.code(), other.message()) => {
                    // Which item DynamoDB does not say: name the largest by our count.
                    let largest = ops
                        .iter()
                        .filter_map(|op| match op {
                            TxOp::Put { key, attrs, .. } => Some((key, attrs)),
                            _ => None,
                        })
                        .max_by_key(|(key, attrs)| {
                            limits::item_size(key, limits::WRITE_VERSION, attrs)
                        });
                    Err(match largest {
                        Some((key, attrs)) => refused_item(key, attrs),
                        None => StoreError::Backend(format!(
                            "TransactWriteItems: {}",
                            DisplayErrorContext(&other)
                        )),
                    })
                }
                other => {
                    let code = other.code().map(str::to_owned);
                    let text = format!("TransactWriteItems: {}", DisplayErrorContext(&other));
                    Err(if code.as_deref() == Some("ValidationException") {
                        StoreError::Invalid(text)
                    } else {
                        StoreError::Backend(text)
                    })
                }
            },
        }
    }

    async fn query(
        &self,
        pk: &str,
        sk_prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        if limit == 0 {
            // DynamoDB's Limit must be at least 1.
            return Err(StoreError::Invalid("query limit must be at least 1".into()));
        }
        // One request, so a page is what DynamoDB returns: at most 1 MB of items, as on the
        // embedded store. One item more than asked tells whether there is a next page.
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .consistent_read(true)
            .limit(limit.saturating_add(1).min(i32::MAX as usize) as i32)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()));
        request = if sk_prefix.is_empty() {
            request.key_condition_expression("#pk = :pk")
        } else {
            request
                .key_condition_expression("#pk = :pk AND begins_with(#sk, :prefix)")
                .expression_attribute_names("#sk", SK)
                .expression_attribute_values(":prefix", AttributeValue::S(sk_prefix.into()))
        };
        if let Some(after) = start_after {
            request = request.set_exclusive_start_key(Some(key_attrs(&Key::new(pk, after))));
        }
        let out = request.send().await.map_err(|e| backend("Query", e))?;
        let mut items = out
            .items()
            .iter()
            .map(item_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|i| i.key.sk.clone())
        } else {
            out.last_evaluated_key()
                .and_then(|k| k.get(SK))
                .and_then(|v| v.as_s().ok())
                .cloned()
        };
        Ok(Page { items, next })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_round_trips_through_attribute_values() {
        let value = json!({
            "n": null, "b": true, "i": -3, "u": u64::MAX, "f": 1.5,
            "s": "", "l": [1, "x", [], {}], "m": {"nested": {"deep": [false]}}
        });
        assert_eq!(from_attr(&to_attr(&value)).unwrap(), value);
    }

    /// DynamoDB's rules ("Item sizes and formats") applied to the attribute values the
    /// adapter actually sends, independently of `limits`.
    fn stored_size(value: &AttributeValue) -> usize {
        match value {
            AttributeValue::S(s) => s.len(),
            AttributeValue::N(n) => limits::number_size(n),
            AttributeValue::Null(_) | AttributeValue::Bool(_) => 1,
            AttributeValue::L(items) => 3 + items.iter().map(|v| 1 + stored_size(v)).sum::<usize>(),
            AttributeValue::M(map) => {
                3 + map
                    .iter()
                    .map(|(k, v)| 1 + k.len() + stored_size(v))
                    .sum::<usize>()
            }
            other => panic!("not written by the adapter: {other:?}"),
        }
    }

    #[test]
    fn limits_count_the_item_as_this_adapter_stores_it() {
        let key = Key::new("run#ab#1", "p#00000000000000000042");
        let attrs = json!({
            "state": {"per_word": {"fox": 3, "über": 12_345}, "total": 1.5},
            "dead": [null, true, -7], "id": "é"
        });
        let attrs = attrs.as_object().unwrap();
        for version in [1, 42, u64::MAX] {
            let mut item = key_attrs(&key);
            item.insert(VERSION.into(), AttributeValue::N(version.to_string()));
            item.insert(ATTRS.into(), AttributeValue::M(to_attrs(attrs)));
            let stored: usize = item.iter().map(|(k, v)| k.len() + stored_size(v)).sum();
            assert_eq!(limits::item_size(&key, version, attrs), stored);
        }
    }

    #[test]
    fn dynamodb_item_size_refusals_are_recognised() {
        let put = "One or more parameter values were invalid: Item size has exceeded the maximum allowed size";
        let update = "Item size to update has exceeded the maximum allowed size";
        assert!(item_too_large(Some("ValidationException"), Some(put)));
        assert!(item_too_large(Some("ValidationException"), Some(update)));
        assert!(item_too_large(Some("ValidationError"), Some(update)));
        assert!(!item_too_large(
            Some("ValidationException"),
            Some("Invalid UpdateExpression")
        ));
        assert!(!item_too_large(
            Some("ConditionalCheckFailed"),
            Some(update)
        ));
        assert!(!item_too_large(None, None));
    }

    #[test]
    fn conditions_become_expressions() {
        assert!(condition_expr(Condition::Always).condition.is_none());
        assert!(condition_expr(Condition::Always).names.is_empty());
        let e = condition_expr(Condition::VersionIs(7));
        assert_eq!(
            e.condition.as_deref(),
            Some("attribute_exists(#pk) AND #v = :expected")
        );
        assert_eq!(e.values[":expected"], AttributeValue::N("7".into()));
        let w = write_expr(&Map::new(), Condition::NotExists);
        assert_eq!(w.condition.as_deref(), Some("attribute_not_exists(#pk)"));
        assert_eq!(w.names["#v"], VERSION);
    }
}
