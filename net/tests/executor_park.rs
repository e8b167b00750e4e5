//! The shard executors must never sleep while they have runnable tasks (vendor/README.md:
//! glommio 0.9.0 parked when its preemption timer fired before it ran anything, and then
//! slept until some unrelated event arrived).
//!
//! A preemption timer of one microsecond makes that case frequent: the timer has usually
//! fired again by the time the executor looks at its task queues. The tasks here only
//! yield to each other: no timer, I/O or other thread would wake a sleeping executor,
//! so with the bug the run never finishes. The deadline detects that hang; it is not a
//! timing measurement (the run takes well under a second).

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

#[test]
fn an_executor_preempted_before_it_ran_anything_does_not_sleep_with_runnable_tasks() {
    let (done_tx, done_rx) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_micros(20))
        .spawn(move || async move {
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    glommio::spawn_local(async {
                        for _ in 0..20_000 {
                            futures_lite::future::yield_now().await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            let _ = done_tx.send(());
        })
        .expect("an executor");
    match done_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(()) => executor.join().expect("the executor thread"),
        Err(_) => panic!("the executor went to sleep with runnable tasks and never woke"),
    }
}
