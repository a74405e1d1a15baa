//! A small work queue on scoped threads: the experiment's arms and the passkey grid's prompts.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Runs `work(i)` for every `i` in `0..total` on up to `threads` scoped threads, each taking the
/// next index as it finishes one; `on_done(i, result)` runs on the calling thread as results
/// arrive (in completion order). After a failed item no further index is handed out; the items
/// already running finish, and the ones never started get no `on_done`.
pub fn for_each_index<T: Send, E: Send>(
    total: usize,
    threads: usize,
    work: impl Fn(usize) -> Result<T, E> + Sync,
    mut on_done: impl FnMut(usize, Result<T, E>),
) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::channel();
        for _ in 0..threads.clamp(1, total.max(1)) {
            let (tx, next, work) = (tx.clone(), &next, &work);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let r = work(i);
                let failed = r.is_err();
                if tx.send((i, r)).is_err() || failed {
                    next.store(total, Ordering::Relaxed);
                    break;
                }
            });
        }
        drop(tx);
        for (i, r) in rx {
            on_done(i, r);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_and_a_failure_stops_new_work() {
        for threads in [1, 3] {
            let mut seen = vec![0u32; 10];
            for_each_index(
                10,
                threads,
                |i| Ok::<_, ()>(i * i),
                |i, r| {
                    assert_eq!(r, Ok(i * i));
                    seen[i] += 1;
                },
            );
            assert_eq!(seen, vec![1; 10], "{threads} threads");
        }
        // One thread: item 2 fails, so 3.. never start.
        let mut done = Vec::new();
        for_each_index(
            10,
            1,
            |i| if i == 2 { Err(i) } else { Ok(i) },
            |i, r| done.push((i, r)),
        );
        assert_eq!(done, vec![(0, Ok(0)), (1, Ok(1)), (2, Err(2))]);
    }
}
