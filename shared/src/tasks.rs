//! A process's long-running tasks, by name. What an invalidator replica or an API process does
//! beside answering is done by tasks that run as long as it does, and one that ends before
//! shutdown was asked for (a panic, or a loop that gave up) leaves the process up but no longer
//! doing that job. [`Tasks::ended`] tells the binary, which then exits so that whatever
//! supervises it starts it again: both binaries follow this one policy.

use std::time::Duration;

use tokio::task::JoinHandle;

/// A task that ended although no shutdown was asked for.
#[derive(Debug, thiserror::Error)]
#[error("the {task} task ended without a shutdown ({how})")]
pub struct TaskEnded {
    pub task: &'static str,
    /// `panicked`, `returned`, or why tokio ended it.
    pub how: String,
}

/// Named, spawned tasks.
#[derive(Default)]
pub struct Tasks(Vec<(&'static str, JoinHandle<()>)>);

impl Tasks {
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.0.push((name, tokio::spawn(task)));
    }

    /// Resolves when the first task ends (never, with no tasks); it is then taken out of the set.
    pub async fn ended(&mut self) -> TaskEnded {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) = futures::future::select_all(self.0.iter_mut().map(|(_, handle)| handle)).await;
        let (task, _) = self.0.remove(index);
        let how = match result {
            Ok(()) => "returned".to_owned(),
            Err(error) if error.is_panic() => "panicked".to_owned(),
            Err(error) => error.to_string(),
        };
        TaskEnded { task, how }
    }

    /// Waits up to `timeout` for every task to end (the caller has asked them to); false when
    /// the timeout cut the wait short.
    pub async fn join(self, timeout: Duration) -> bool {
        let all = futures::future::join_all(self.0.into_iter().map(|(_, handle)| handle));
        tokio::time::timeout(timeout, all).await.is_ok()
    }

    /// Aborts every task at once, as a crash would.
    pub fn abort(self) {
        for (_, handle) in self.0 {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_returns_is_reported_by_name() {
        let mut tasks = Tasks::default();
        tasks.spawn("forever", std::future::pending());
        tasks.spawn("worker", async { panic!("a bug") });
        let ended = tasks.ended().await;
        assert_eq!((ended.task, ended.how.as_str()), ("worker", "panicked"));
        tasks.spawn("listener", async {});
        let ended = tasks.ended().await;
        assert_eq!((ended.task, ended.how.as_str()), ("listener", "returned"));
        let still_running = tokio::time::timeout(Duration::from_millis(50), tasks.ended()).await;
        assert!(still_running.is_err(), "the task that runs on is not reported");
        assert!(!tasks.join(Duration::from_millis(10)).await);
    }
}
