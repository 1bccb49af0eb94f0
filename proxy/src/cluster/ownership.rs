//! Which live process owns each sessions-topic partition, and where an MQTT 5 client
//! belongs. Every process computes the same answer from the same live set, so no process
//! has to tell another.
//!
//! Assignment is rendezvous hashing with a cap: each partition goes to the live process
//! with the highest score for it that still has fewer than ceil(partitions / processes)
//! partitions. A process joining or leaving moves few partitions, and the load stays even
//! with few partitions. Ownership is per sessions-topic partition, the same murmur2 of the
//! client id as the messages topics use for `clients` identities, so a later step can let
//! a process read only the messages partitions of the sessions it owns.

use crate::kafka::partitioner::murmur2;

/// The owner of each partition `0..partitions` among `live` (instance ids); empty when no
/// process is live.
pub fn assign(partitions: i32, live: &[&str]) -> Vec<String> {
    assign_by(partitions, live, score)
}

/// [`assign`] with scores from `score(instance, partition)`.
fn assign_by(partitions: i32, live: &[&str], score: impl Fn(&str, i32) -> i32) -> Vec<String> {
    if live.is_empty() || partitions <= 0 {
        return Vec::new();
    }
    let count = usize::try_from(partitions).unwrap_or(0);
    let cap = count.div_ceil(live.len());
    let mut load = vec![0usize; live.len()];
    (0..partitions)
        .map(|partition| {
            let mut ranked: Vec<(i32, usize)> = live
                .iter()
                .enumerate()
                .map(|(i, instance)| (score(instance, partition), i))
                .collect();
            // Highest score first; the instance id breaks ties the same way everywhere.
            ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| live[a.1].cmp(live[b.1])));
            let chosen = ranked
                .iter()
                .map(|(_, i)| *i)
                .find(|i| load[*i] < cap)
                .unwrap_or(ranked[0].1);
            load[chosen] += 1;
            live[chosen].to_owned()
        })
        .collect()
}

fn score(instance: &str, partition: i32) -> i32 {
    murmur2(format!("{instance}/{partition}").as_bytes())
}

/// What to do with an MQTT 5 CONNECT (or a connected client) whose session is in
/// `partition`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Serve it here.
    Here,
    /// Send it to this server reference.
    Elsewhere(String),
}

/// Where a client of `partition` belongs: elsewhere only when redirects are on, the client
/// speaks MQTT 5, and a live process other than `me` that has a server reference owns it.
pub fn place(
    partition: i32,
    owners: &[String],
    me: &str,
    redirect: bool,
    mqtt5: bool,
    reference_of: impl Fn(&str) -> Option<String>,
) -> Placement {
    if !(redirect && mqtt5) {
        return Placement::Here;
    }
    let owner = usize::try_from(partition).ok().and_then(|p| owners.get(p));
    match owner {
        Some(owner) if owner != me => reference_of(owner).map_or(Placement::Here, Placement::Elsewhere),
        _ => Placement::Here,
    }
}

/// Which of the processes with members of one share (`candidates`) delivers the records of
/// each messages partition `0..partitions` to its members: capped rendezvous hashing as in
/// [`assign`], salted with the share's name so that different shares spread differently.
/// Per partition, not per record, so that one process at a time keeps the share's cursor
/// there (where its members have acknowledged up to); the same answer on every process,
/// even, and a process joining or leaving moves few partitions.
pub fn share_servers(candidates: &[&str], share: &str, partitions: i32) -> Vec<String> {
    assign_by(partitions, candidates, |instance, partition| {
        murmur2(format!("{instance}/{share}/{partition}").as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(owners: &[String], live: &[&str]) -> Vec<usize> {
        live.iter().map(|m| owners.iter().filter(|o| o == m).count()).collect()
    }

    #[test]
    fn every_partition_gets_one_live_owner_and_the_load_is_even() {
        let live = ["p0", "p1", "p2"];
        for partitions in [1, 3, 7, 64] {
            let owners = assign(partitions, &live);
            assert_eq!(owners.len(), usize::try_from(partitions).unwrap_or(0));
            let counts = counts(&owners, &live);
            let max = usize::try_from(partitions).unwrap_or(0).div_ceil(3);
            assert!(counts.iter().all(|c| *c <= max), "{partitions}: {counts:?}");
        }
        assert!(assign(3, &[]).is_empty());
    }

    #[test]
    fn the_answer_does_not_depend_on_who_asks_or_in_which_order() {
        assert_eq!(assign(12, &["a", "b", "c"]), assign(12, &["a", "b", "c"]));
    }

    #[test]
    fn a_process_leaving_moves_only_its_own_partitions_mostly() {
        let before = assign(64, &["p0", "p1", "p2", "p3"]);
        let after = assign(64, &["p0", "p1", "p2"]);
        let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
        let had = before.iter().filter(|o| *o == "p3").count();
        // p3's partitions must move; the cap moves a few others at most.
        assert!(moved >= had && moved <= had + 64 / 4, "moved {moved}, p3 had {had}");
        assert!(after.iter().all(|o| o != "p3"));
    }

    #[test]
    fn each_partition_of_a_share_has_one_server_and_the_load_is_even() {
        let share = "$share/g/a/#";
        let servers = share_servers(&["p0", "p1", "p2"], share, 3);
        assert_eq!(share_servers(&["p2", "p0", "p1"], share, 3), servers, "order-free");
        assert_eq!(counts(&servers, &["p0", "p1", "p2"]), [1, 1, 1]);
        let many = share_servers(&["p0", "p1", "p2"], share, 64);
        assert!(counts(&many, &["p0", "p1", "p2"]).iter().all(|c| *c >= 20), "{many:?}");
        let other = share_servers(&["p0", "p1", "p2"], "$share/h/a/#", 64);
        assert_ne!(many, other, "shares spread differently");
        assert!(share_servers(&[], share, 3).is_empty());
    }

    #[test]
    fn clients_are_placed_at_the_owner_only_for_mqtt5_with_redirects_on() {
        let owners = vec!["p0".to_owned(), "p1".to_owned()];
        let reference = |i: &str| Some(format!("{i}.svc:1883"));
        assert_eq!(
            place(1, &owners, "p0", true, true, reference),
            Placement::Elsewhere("p1.svc:1883".into())
        );
        assert_eq!(place(0, &owners, "p0", true, true, reference), Placement::Here);
        assert_eq!(place(1, &owners, "p0", false, true, reference), Placement::Here);
        assert_eq!(place(1, &owners, "p0", true, false, reference), Placement::Here);
        assert_eq!(place(1, &owners, "p0", true, true, |_| None), Placement::Here);
        assert_eq!(place(5, &owners, "p0", true, true, reference), Placement::Here);
    }
}
