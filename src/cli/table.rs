//! The text report of a pass that `plan` and `once` print: a summary line,
//! one aligned row per node, then what needs an operator's eye (nodes that
//! left the ring, targets and groups too heavy to balance).

use crate::pass::{NodeReport, PassReport};

/// The per-node table `plan` and `once` print; `once` adds each node's
/// delivery result.
pub(super) fn print_table(r: &PassReport) {
    print_summary(r);
    let columns = Columns::of(r);
    let rows: Vec<Vec<String>> = r.nodes.iter().map(|n| columns.row(n)).collect();
    let header = columns.header();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|row| row[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| println!("  {}", columns.align(&cells, &widths));
    line(header.clone());
    for (n, row) in r.nodes.iter().zip(&rows) {
        line(row.iter().map(String::as_str).collect());
        if let Some(e) = &n.error {
            println!("    error: {e}");
        }
    }
    for d in &r.departed {
        println!("  left the ring: {} ({})", d.node, d.result.as_str());
    }
    print_oversized(r);
    if let Some(rules) = &r.rules {
        rules.print();
    }
    println!();
}

/// The service line, invalid targets, and the affinity grouping: what the
/// table's counts are counts of.
fn print_summary(r: &PassReport) {
    println!(
        "service {}: {} targets ({} invalid, {} duplicates merged), {} nodes, each target on {} node(s)",
        r.name,
        r.targets,
        r.invalid,
        r.duplicates,
        r.nodes.len(),
        r.replicas
    );
    for bad in &r.invalid_samples {
        println!("  invalid: {bad}");
    }
    for line in r.handover.iter().flat_map(crate::pass::handover::describe) {
        println!("{line}");
    }
    if let Some(a) = &r.affinity {
        println!(
            "  affinity {:?}: {} groups, {} target(s) lacking a label of the template, each placed alone{}",
            a.template,
            a.groups,
            a.ungrouped,
            if a.ungrouped_samples.is_empty() {
                String::new()
            } else {
                format!(": {}", a.ungrouped_samples.join(" "))
            }
        );
    }
}

/// Which optional columns the table has: groups only with affinity, the
/// weight only when targets are weighted, the delivery result only when
/// there was a delivery.
struct Columns {
    grouped: bool,
    weighted: bool,
    delivered: bool,
}

impl Columns {
    fn of(r: &PassReport) -> Self {
        Self {
            grouped: r.affinity.is_some(),
            weighted: r.nodes.iter().any(|n| n.weight.is_some()),
            delivered: !r.dry_run,
        }
    }

    fn header(&self) -> Vec<&'static str> {
        let mut header = vec!["NODE", "TARGETS"];
        if self.grouped {
            header.push("GROUPS");
        }
        if self.weighted {
            header.push("WEIGHT");
        }
        header.extend(["IN", "OUT"]);
        if self.delivered {
            header.push("RESULT");
        }
        header.push("FILE");
        header
    }

    fn row(&self, n: &NodeReport) -> Vec<String> {
        let mut row = vec![n.node.clone(), n.count.to_string()];
        if self.grouped {
            row.push(n.groups.unwrap_or(0).to_string());
        }
        if self.weighted {
            row.push(n.weight.unwrap_or(0).to_string());
        }
        row.extend([n.moved_in.to_string(), n.moved_out.to_string()]);
        if self.delivered {
            row.push(n.result.map(|r| r.as_str()).unwrap_or("ok").into());
        }
        row.push(n.file.clone());
        row
    }

    /// One line of cells padded to `widths`: counts align right; names,
    /// results and files left; the last cell is not padded.
    fn align(&self, cells: &[&str], widths: &[usize]) -> String {
        let numbers = 3 + usize::from(self.grouped) + usize::from(self.weighted);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                let w = widths[c];
                let numeric = (1..=numbers).contains(&c);
                if c == cells.len() - 1 {
                    cell.to_string()
                } else if numeric {
                    format!("{cell:>w$}")
                } else {
                    format!("{cell:<w$}")
                }
            })
            .collect();
        text.join("  ")
    }
}

/// Targets and affinity groups heavier than a node's fair share: placed
/// whole, so they are where balance is lost.
fn print_oversized(r: &PassReport) {
    if r.oversized_count > 0 {
        println!(
            "  oversized (heavier than a node's fair share, each placed whole): {} target(s): {}",
            r.oversized_count,
            r.oversized.join(" ")
        );
    }
    if let Some(a) = r.affinity.as_ref().filter(|a| a.oversized_count > 0) {
        let first: Vec<String> = a
            .oversized
            .iter()
            .map(|g| format!("{} ({} targets, weight {})", g.key, g.targets, g.weight))
            .collect();
        println!(
            "  oversized groups (heavier than a node's fair share, each placed whole, not split): {}: {}",
            a.oversized_count,
            first.join(", ")
        );
    }
}
