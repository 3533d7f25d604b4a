//! Prometheus exposition (text format 0.0.4) of the daemon's snapshot: RPO and threshold per VM
//! and group, cycle durations, bytes scanned/changed/shipped, failures, points kept, repository
//! bytes, verify problems and config reloads. Rendered from the snapshot at scrape time, so an
//! RPO keeps growing between cycles as it really does.

use std::fmt::Write;
use std::time::SystemTime;

use lifeboat_api::status::{GroupState, GroupStatus, Maintenance, VmStatus};

use crate::counters::{BUCKETS, GroupCounters};
use crate::messages::Snapshot;

/// The exposition being written.
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

/// A family of samples, one per row of what it is about: its name, type, help, and the value
/// of a row (none: no sample for it, e.g. an RPO before the first point).
struct Family<T> {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&T) -> Option<f64>,
}

const fn gauge<T>(
    name: &'static str,
    help: &'static str,
    value: fn(&T) -> Option<f64>,
) -> Family<T> {
    Family {
        name,
        kind: "gauge",
        help,
        value,
    }
}

const fn counter<T>(
    name: &'static str,
    help: &'static str,
    value: fn(&T) -> Option<f64>,
) -> Family<T> {
    Family {
        kind: "counter",
        ..gauge(name, help, value)
    }
}

fn flag(b: bool) -> Option<f64> {
    Some(f64::from(u8::from(b)))
}

/// Per VM, labelled `vm` and `group`.
const VM: &[Family<VmStatus>] = &[
    gauge(
        "lifeboat_vm_rpo_seconds",
        "Age of the VM's newest recovery point (absent before the first).",
        |v| v.rpo.seconds,
    ),
    gauge(
        "lifeboat_vm_rpo_threshold_seconds",
        "The RPO threshold of the VM's policy.",
        |v| Some(v.rpo.threshold_seconds),
    ),
    gauge(
        "lifeboat_vm_rpo_ok",
        "1 when the VM has a point within its RPO threshold, else 0.",
        |v| flag(v.rpo.ok),
    ),
];

/// Per group, labelled `group`.
const GROUP: &[Family<GroupStatus>] = &[
    gauge(
        "lifeboat_group_rpo_seconds",
        "Age of the group's newest recovery point (absent before the first).",
        |g| g.rpo.seconds,
    ),
    gauge(
        "lifeboat_group_rpo_threshold_seconds",
        "The strictest RPO threshold of the group's VMs.",
        |g| Some(g.rpo.threshold_seconds),
    ),
    gauge(
        "lifeboat_group_last_point_timestamp_seconds",
        "When the group's newest point was captured (Unix seconds).",
        |g| {
            g.last_point
                .as_ref()
                .map(|p| p.captured_unix_ms as f64 / 1000.0)
        },
    ),
    gauge(
        "lifeboat_group_standby",
        "1 while another writer holds the group's lease and this daemon stands by.",
        |g| flag(g.state == GroupState::Standby),
    ),
    gauge(
        "lifeboat_group_failures",
        "Failed cycles of the group in a row.",
        |g| Some(f64::from(g.failures)),
    ),
];

/// Per group, from what the daemon counted, labelled `group` (after the histogram and the
/// cycles by result).
const COUNTED: &[Family<GroupCounters>] = &[
    counter(
        "lifeboat_bytes_scanned_total",
        "Bytes of disks scanned by committed cycles.",
        |c| Some(c.scanned as f64),
    ),
    counter(
        "lifeboat_bytes_changed_total",
        "Bytes of chunks changed since their parent point.",
        |c| Some(c.changed as f64),
    ),
    counter(
        "lifeboat_bytes_shipped_total",
        "Bytes of packs written to the target repository.",
        |c| Some(c.shipped as f64),
    ),
    counter(
        "lifeboat_points_expired_total",
        "Points removed by retention after commits.",
        |c| Some(c.expired as f64),
    ),
    gauge(
        "lifeboat_points",
        "Recovery points of the group kept in its repository (after retention).",
        |c| c.points_kept.map(|n| n as f64),
    ),
];

/// Per site's repository, labelled `site`.
const SITE: &[Family<Maintenance>] = &[
    gauge(
        "lifeboat_repository_bytes",
        "Bytes of every object of the site's repository.",
        |m| m.repository_bytes.map(|b| b as f64),
    ),
    gauge(
        "lifeboat_verify_problems",
        "Problems the last quick verify found in the site's repository.",
        |m| m.last_verify_at.as_ref().map(|_| m.verify_problems as f64),
    ),
];

/// The daemon's config, unlabelled (after the reloads by result).
const CONFIG: &[Family<Snapshot>] = &[
    gauge(
        "lifeboat_config_last_reload_success",
        "1 when the last reload was applied (or none happened), 0 when it was rejected.",
        |s| flag(s.reloads.last_ok),
    ),
    gauge(
        "lifeboat_config_last_reload_seconds",
        "How long the last reload took to validate and apply.",
        |s| Some(s.reloads.last_seconds),
    ),
    gauge(
        "lifeboat_config_generation",
        "The running config's generation: 1 at start, one more per applied reload.",
        |s| Some(s.daemon.config.generation as f64),
    ),
];

impl Out {
    /// Every family of `table`, each with a sample per row that has a value.
    fn table<'a, T: 'a>(
        &mut self,
        table: &[Family<T>],
        rows: impl Iterator<Item = (Vec<(&'a str, &'a str)>, &'a T)> + Clone,
    ) {
        for f in table {
            self.family(f.name, f.kind, f.help);
            for (labels, row) in rows.clone() {
                if let Some(v) = (f.value)(row) {
                    self.sample(f.name, &labels, v);
                }
            }
        }
    }
}

/// The exposition of `snap` as of `now`.
pub(crate) fn render(snap: &Snapshot, now: SystemTime) -> String {
    let status = snap.status(now);
    let mut o = Out(String::new());
    o.table(
        VM,
        status.vms.iter().map(|v| {
            (
                vec![("vm", v.name.as_str()), ("group", v.group.as_str())],
                v,
            )
        }),
    );
    o.table(
        GROUP,
        status
            .groups
            .iter()
            .map(|g| (vec![("group", g.name.as_str())], g)),
    );

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
        for (result, n) in [("committed", c.cycles_ok), ("failed", c.cycles_failed)] {
            o.sample(
                "lifeboat_cycles_total",
                &[("group", &spec.name), ("result", result)],
                n as f64,
            );
        }
    }
    o.table(
        COUNTED,
        snap.groups
            .iter()
            .map(|(spec, _, c)| (vec![("group", spec.name.as_str())], c)),
    );
    o.table(
        SITE,
        snap.daemon
            .maintenance
            .iter()
            .map(|m| (vec![("site", m.site.as_str())], m)),
    );

    o.family(
        "lifeboat_config_reloads_total",
        "counter",
        "Config reloads by result.",
    );
    for (result, n) in [
        ("applied", snap.reloads.applied),
        ("rejected", snap.reloads.rejected),
    ] {
        o.sample(
            "lifeboat_config_reloads_total",
            &[("result", result)],
            n as f64,
        );
    }
    o.table(CONFIG, std::iter::once((Vec::new(), snap)));

    o.family(
        "lifeboat_unprotected_domains",
        "gauge",
        "Domains on the hosts of a libvirt site that no VM of the inventory protects.",
    );
    let libvirt_sites = snap
        .inventory
        .sites
        .iter()
        .filter(|(_, s)| s.compute.value == lifeboat_plan::inventory::ComputeDriver::Libvirt);
    for (site, _) in libvirt_sites {
        let n = status
            .unprotected_domains
            .iter()
            .filter(|d| d.site == site)
            .count();
        o.sample("lifeboat_unprotected_domains", &[("site", site)], n as f64);
    }

    o.family(
        "lifeboat_hydration_done_bytes",
        "gauge",
        "Bytes an instantly booted disk holds so far (it boots from the repository and fills behind).",
    );
    for h in &status.hydrating {
        let labels = [("run", h.run.as_str()), ("vm", &h.vm), ("disk", &h.disk)];
        o.sample(
            "lifeboat_hydration_done_bytes",
            &labels,
            h.done_bytes as f64,
        );
    }
    o.family(
        "lifeboat_hydration_total_bytes",
        "gauge",
        "The size of an instantly booted disk still hydrating.",
    );
    for h in &status.hydrating {
        let labels = [("run", h.run.as_str()), ("vm", &h.vm), ("disk", &h.disk)];
        o.sample(
            "lifeboat_hydration_total_bytes",
            &labels,
            h.total_bytes as f64,
        );
    }
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
