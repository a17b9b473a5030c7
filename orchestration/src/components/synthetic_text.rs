//! `synthetic-text`: the paper's feed. Message i (1-based) is `"{text} {i}"`; messages are
//! grouped `partition_size` to a partition.

use async_trait::async_trait;
use serde_json::json;

use super::{feed_tasks, ComponentError, FeedTask, Partition, Plan, Source, SourceContext};

#[derive(Clone, Debug)]
pub struct SyntheticText {
    pub messages: u64,
    pub text: String,
    pub partition_size: u64,
}

impl SyntheticText {
    pub fn total_partitions(&self) -> u64 {
        self.messages.div_ceil(self.partition_size)
    }

    /// The lines of partition `p`: messages `p*size+1 ..= min((p+1)*size, messages)`.
    pub fn lines(&self, p: u64) -> Vec<String> {
        let first = p * self.partition_size + 1;
        let last = ((p + 1) * self.partition_size).min(self.messages);
        (first..=last)
            .map(|i| format!("{} {i}", self.text))
            .collect()
    }
}

#[async_trait]
impl Source for SyntheticText {
    async fn plan(&self, _ctx: &SourceContext) -> Result<Plan, ComponentError> {
        let total_partitions = self.total_partitions();
        Ok(Plan {
            total_partitions,
            tasks: feed_tasks(total_partitions),
            input_bytes: None,
        })
    }

    async fn emit(
        &self,
        task: &FeedTask,
        _ctx: &SourceContext,
    ) -> Result<Vec<Partition>, ComponentError> {
        let end = task.first.saturating_add(task.count);
        if end > self.total_partitions() {
            return Err(ComponentError::Malformed(format!(
                "task {}..{end} beyond the job's {} partitions",
                task.first,
                self.total_partitions()
            )));
        }
        Ok((task.first..end)
            .map(|index| Partition {
                index,
                payload: json!({ "lines": self.lines(index) }),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_hold_every_message_once() {
        let s = SyntheticText {
            messages: 7,
            text: "a b".into(),
            partition_size: 3,
        };
        assert_eq!(s.total_partitions(), 3);
        assert_eq!(s.lines(0), ["a b 1", "a b 2", "a b 3"]);
        assert_eq!(s.lines(2), ["a b 7"]);
    }
}
