//! A small linearizability checker for one read/write register (Wing & Gong search with
//! memoisation). Writes carry unique values. An operation whose outcome is unknown (timeout,
//! broken connection) has no completion: a write may take effect at any point after its
//! invocation or never; unknown reads are dropped by the caller.

use std::collections::HashSet;

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpKind {
    /// Wrote this value.
    Write(String),
    /// Read this value (`None`: the key was absent).
    Read(Option<String>),
}

/// One recorded operation: invocation and completion in ns since the test's start.
#[derive(Debug, Clone)]
pub struct Op {
    pub invoke: u128,
    /// `None`: the outcome is unknown.
    pub complete: Option<u128>,
    pub kind: OpKind,
}

/// `Ok(())` when some linearization explains every completed operation, starting from
/// `initial`.
pub fn check(ops: &[Op], initial: Option<String>) -> Result<(), String> {
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let required: usize = ops.iter().filter(|o| o.complete.is_some()).count();
    let mut memo: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut done = vec![0u64; words];
    let mut budget: u64 = 20_000_000;
    if dfs(ops, &mut done, initial, 0, required, &mut memo, &mut budget) {
        Ok(())
    } else if budget == 0 {
        Err("linearizability search exceeded its budget".into())
    } else {
        Err(format!(
            "history of {n} operations ({required} completed) is not linearizable"
        ))
    }
}

fn is_done(done: &[u64], i: usize) -> bool {
    done[i / 64] & (1 << (i % 64)) != 0
}

fn dfs(
    ops: &[Op],
    done: &mut Vec<u64>,
    state: Option<String>,
    done_required: usize,
    required: usize,
    memo: &mut HashSet<(Vec<u64>, Option<String>)>,
    budget: &mut u64,
) -> bool {
    if done_required == required {
        return true;
    }
    if *budget == 0 {
        return false;
    }
    *budget -= 1;
    if memo.contains(&(done.clone(), state.clone())) {
        return false;
    }
    // The earliest completion among pending completed ops bounds what may go next.
    let min_complete = ops
        .iter()
        .enumerate()
        .filter(|(i, o)| !is_done(done, *i) && o.complete.is_some())
        .filter_map(|(_, o)| o.complete)
        .min()
        .unwrap_or(u128::MAX);
    for (i, op) in ops.iter().enumerate() {
        if is_done(done, i) || op.invoke > min_complete {
            continue;
        }
        let next_state = match &op.kind {
            OpKind::Read(v) => {
                if *v != state {
                    continue;
                }
                state.clone()
            }
            OpKind::Write(v) => Some(v.clone()),
        };
        done[i / 64] |= 1 << (i % 64);
        let add = usize::from(op.complete.is_some());
        if dfs(
            ops,
            done,
            next_state,
            done_required + add,
            required,
            memo,
            budget,
        ) {
            return true;
        }
        done[i / 64] &= !(1 << (i % 64));
    }
    memo.insert((done.clone(), state));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(inv: u128, comp: Option<u128>, v: &str) -> Op {
        Op {
            invoke: inv,
            complete: comp,
            kind: OpKind::Write(v.into()),
        }
    }
    fn r(inv: u128, comp: u128, v: Option<&str>) -> Op {
        Op {
            invoke: inv,
            complete: Some(comp),
            kind: OpKind::Read(v.map(str::to_string)),
        }
    }

    #[test]
    fn accepts_and_rejects() {
        // sequential: w a, r a
        assert!(check(&[w(0, Some(1), "a"), r(2, 3, Some("a"))], None).is_ok());
        // stale read after a completed write
        assert!(check(
            &[w(0, Some(1), "a"), w(2, Some(3), "b"), r(4, 5, Some("a"))],
            None
        )
        .is_err());
        // concurrent write may be seen either way
        assert!(check(
            &[
                w(0, Some(10), "a"),
                r(1, 2, None),
                r(3, 4, Some("a")),
                r(5, 6, Some("a"))
            ],
            None
        )
        .is_ok());
        // once seen, cannot flip back to the old value
        assert!(check(
            &[w(0, Some(10), "a"), r(1, 2, Some("a")), r(3, 4, None)],
            None
        )
        .is_err());
        // unknown write may take effect late
        assert!(check(&[w(0, None, "a"), r(5, 6, None), r(7, 8, Some("a"))], None).is_ok());
    }
}
