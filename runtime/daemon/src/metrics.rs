//! Prometheus exposition (text format 0.0.4) of the daemon's snapshot: RPO and threshold per VM
//! and group, cycle durations, bytes scanned/changed/shipped, failures, points kept, repository
//! bytes, verify problems and config reloads. Rendered from the snapshot at scrape time, so an
//! RPO keeps growing between cycles as it really does.

use std::fmt::Write;
use std::time::SystemTime;

use crate::counters::{BUCKETS, GroupCounters};
use crate::messages::Snapshot;

/// Upper bounds of the cycle duration histogram, in seconds.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        let value = if value.is_infinite() {
            "+Inf".to_string()
        } else {
            value.to_string()
        };
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// The exposition of `snap` as of `now`.
pub(crate) fn render(snap: &Snapshot, now: SystemTime) -> String {
    let status = snap.status(now);
    let mut o = Out(String::new());

    o.family(
        "lifeboat_vm_rpo_seconds",
        "gauge",
        "Age of the VM's newest recovery point (absent before the first).",
    );
    for v in &status.vms {
        if let Some(s) = v.rpo.seconds {
            o.sample(
                "lifeboat_vm_rpo_seconds",
                &[("vm", &v.name), ("group", &v.group)],
                s,
            );
        }
    }
    o.family(
        "lifeboat_vm_rpo_threshold_seconds",
        "gauge",
        "The RPO threshold of the VM's policy.",
    );
    for v in &status.vms {
        o.sample(
            "lifeboat_vm_rpo_threshold_seconds",
            &[("vm", &v.name), ("group", &v.group)],
            v.rpo.threshold_seconds,
        );
    }
    o.family(
        "lifeboat_vm_rpo_ok",
        "gauge",
        "1 when the VM has a point within its RPO threshold, else 0.",
    );
    for v in &status.vms {
        o.sample(
            "lifeboat_vm_rpo_ok",
            &[("vm", &v.name), ("group", &v.group)],
            f64::from(u8::from(v.rpo.ok)),
        );
    }
    o.family(
        "lifeboat_group_rpo_seconds",
        "gauge",
        "Age of the group's newest recovery point (absent before the first).",
    );
    for g in &status.groups {
        if let Some(s) = g.rpo.seconds {
            o.sample("lifeboat_group_rpo_seconds", &[("group", &g.name)], s);
        }
    }
    o.family(
        "lifeboat_group_rpo_threshold_seconds",
        "gauge",
        "The strictest RPO threshold of the group's VMs.",
    );
    for g in &status.groups {
        o.sample(
            "lifeboat_group_rpo_threshold_seconds",
            &[("group", &g.name)],
            g.rpo.threshold_seconds,
        );
    }
    o.family(
        "lifeboat_group_last_point_timestamp_seconds",
        "gauge",
        "When the group's newest point was captured (Unix seconds).",
    );
    for g in &status.groups {
        if let Some(p) = &g.last_point {
            o.sample(
                "lifeboat_group_last_point_timestamp_seconds",
                &[("group", &g.name)],
                p.captured_unix_ms as f64 / 1000.0,
            );
        }
    }
    o.family(
        "lifeboat_group_standby",
        "gauge",
        "1 while another writer holds the group's lease and this daemon stands by.",
    );
    for g in &status.groups {
        o.sample(
            "lifeboat_group_standby",
            &[("group", &g.name)],
            f64::from(u8::from(g.state == "standby")),
        );
    }
    o.family(
        "lifeboat_group_failures",
        "gauge",
        "Failed cycles of the group in a row.",
    );
    for g in &status.groups {
        o.sample(
            "lifeboat_group_failures",
            &[("group", &g.name)],
            f64::from(g.failures),
        );
    }

    o.family(
        "lifeboat_cycle_duration_seconds",
        "histogram",
        "Duration of committed replication cycles.",
    );
    for (spec, _, c) in &snap.groups {
        let g = spec.name.as_str();
        for (i, le) in BUCKETS.iter().enumerate() {
            let n = c.buckets.get(i).copied().unwrap_or(0);
            o.sample(
                "lifeboat_cycle_duration_seconds_bucket",
                &[("group", g), ("le", &le.to_string())],
                n as f64,
            );
        }
        o.sample(
            "lifeboat_cycle_duration_seconds_bucket",
            &[("group", g), ("le", "+Inf")],
            c.cycles_ok as f64,
        );
        o.sample(
            "lifeboat_cycle_duration_seconds_sum",
            &[("group", g)],
            c.duration_sum,
        );
        o.sample(
            "lifeboat_cycle_duration_seconds_count",
            &[("group", g)],
            c.cycles_ok as f64,
        );
    }
    o.family(
        "lifeboat_cycles_total",
        "counter",
        "Replication cycles by result.",
    );
    for (spec, _, c) in &snap.groups {
        o.sample(
            "lifeboat_cycles_total",
            &[("group", &spec.name), ("result", "committed")],
            c.cycles_ok as f64,
        );
        o.sample(
            "lifeboat_cycles_total",
            &[("group", &spec.name), ("result", "failed")],
            c.cycles_failed as f64,
        );
    }
    type Counter = fn(&GroupCounters) -> u64;
    let bytes: [(&str, &str, Counter); 3] = [
        (
            "lifeboat_bytes_scanned_total",
            "Bytes of disks scanned by committed cycles.",
            |c| c.scanned,
        ),
        (
            "lifeboat_bytes_changed_total",
            "Bytes of chunks changed since their parent point.",
            |c| c.changed,
        ),
        (
            "lifeboat_bytes_shipped_total",
            "Bytes of packs written to the target repository.",
            |c| c.shipped,
        ),
    ];
    for (name, help, get) in bytes {
        o.family(name, "counter", help);
        for (spec, _, c) in &snap.groups {
            o.sample(name, &[("group", &spec.name)], get(c) as f64);
        }
    }
    o.family(
        "lifeboat_points_expired_total",
        "counter",
        "Points removed by retention after commits.",
    );
    for (spec, _, c) in &snap.groups {
        o.sample(
            "lifeboat_points_expired_total",
            &[("group", &spec.name)],
            c.expired as f64,
        );
    }
    o.family(
        "lifeboat_points",
        "gauge",
        "Recovery points of the group kept in its repository (after retention).",
    );
    for (spec, _, c) in &snap.groups {
        if let Some(n) = c.points_kept {
            o.sample("lifeboat_points", &[("group", &spec.name)], n as f64);
        }
    }

    o.family(
        "lifeboat_repository_bytes",
        "gauge",
        "Bytes of every object of the site's repository.",
    );
    for m in &snap.daemon.maintenance {
        if let Some(b) = m.repository_bytes {
            o.sample("lifeboat_repository_bytes", &[("site", &m.site)], b as f64);
        }
    }
    o.family(
        "lifeboat_verify_problems",
        "gauge",
        "Problems the last quick verify found in the site's repository.",
    );
    for m in &snap.daemon.maintenance {
        if m.last_verify_at.is_some() {
            o.sample(
                "lifeboat_verify_problems",
                &[("site", &m.site)],
                m.verify_problems as f64,
            );
        }
    }

    o.family(
        "lifeboat_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    o.sample(
        "lifeboat_config_reloads_total",
        &[("result", "applied")],
        snap.reloads.applied as f64,
    );
    o.sample(
        "lifeboat_config_reloads_total",
        &[("result", "rejected")],
        snap.reloads.rejected as f64,
    );
    o.family(
        "lifeboat_config_last_reload_success",
        "gauge",
        "1 when the last reload was applied (or none happened), 0 when it was rejected.",
    );
    o.sample(
        "lifeboat_config_last_reload_success",
        &[],
        f64::from(u8::from(snap.reloads.last_ok)),
    );
    o.family(
        "lifeboat_config_last_reload_seconds",
        "gauge",
        "How long the last reload took to validate and apply.",
    );
    o.sample(
        "lifeboat_config_last_reload_seconds",
        &[],
        snap.reloads.last_seconds,
    );
    o.family(
        "lifeboat_config_generation",
        "gauge",
        "The running config's generation: 1 at start, one more per applied reload.",
    );
    o.sample(
        "lifeboat_config_generation",
        &[],
        snap.daemon.config.generation as f64,
    );
    o.0
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_histogram_is_cumulative() {
        let mut c = GroupCounters::default();
        c.committed(0.3, 10, 5, 2, Some(3));
        c.committed(7.0, 10, 5, 2, None);
        // 0.3 s falls in every bucket from 0.5 up; 7 s in every bucket from 10 up.
        assert_eq!(c.buckets, vec![0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
        assert_eq!(c.cycles_ok, 2);
        assert_eq!(c.points_kept, Some(3));
        assert_eq!(c.shipped, 4);
    }
}
