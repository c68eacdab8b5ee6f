//! Interrupts in flight: a turn dropped before its end is interrupted in the background (see
//! `engine::warm`), and its worker comes back for the session's next turn once the CLI ended the
//! turn. A next turn that arrives meanwhile waits for that (bounded): resuming the session in a
//! second process while the first still holds it fails (codex: "already has an active writer").

use super::*;

/// Held while a session's turn is being interrupted; its drop wakes the waiting turns.
pub(crate) struct InterruptGuard {
    workers: Workers,
    session: String,
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        {
            let mut st = self.workers.state();
            if let Some(n) = st.interrupting.get_mut(&self.session) {
                *n -= 1;
                if *n == 0 {
                    st.interrupting.remove(&self.session);
                }
            }
        }
        self.workers.interrupted.notify_waiters();
    }
}

impl Workers {
    /// Notes that a turn of `session` is being interrupted until the guard drops.
    pub(crate) fn interrupting(&self, session: &str) -> InterruptGuard {
        *self
            .state()
            .interrupting
            .entry(session.to_string())
            .or_insert(0) += 1;
        InterruptGuard {
            workers: self.clone(),
            session: session.to_string(),
        }
    }

    /// Waits, at most `max`, until no turn of `session` is being interrupted.
    pub(crate) async fn after_interrupt(&self, session: &str, max: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let woken = self.interrupted.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if !self.state().interrupting.contains_key(session) {
                return;
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_next_turn_waits_for_the_interrupt_to_end() {
        let workers = Workers::default();
        let long = std::time::Duration::from_secs(30);
        // Nothing in flight: no wait.
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            workers.after_interrupt("s", long),
        )
        .await
        .expect("no interrupt, no wait");
        let guard = workers.interrupting("s");
        let waiter = {
            let w = workers.clone();
            tokio::spawn(async move { w.after_interrupt("s", long).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "it waits while the interrupt runs");
        // Another session's interrupt does not hold it.
        drop(workers.interrupting("other"));
        drop(guard);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken when the interrupt ended")
            .unwrap();
    }
}
