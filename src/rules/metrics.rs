//! Metrics of rule files, registered into promshard's registry:
//! `promshard_rule_files` (files in effect), `promshard_rule_files_refused`
//! (files refused by the last pass) and
//! `promshard_rule_deliveries_total{result}` (deliveries to nodes).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::RulesReport;
use crate::push::DeliveryResult;

type Labels = Vec<(&'static str, String)>;

/// The rule metrics; cheap clones of the registered families.
#[derive(Default)]
pub struct RuleMetrics {
    files: Family<Labels, Gauge>,
    refused: Family<Labels, Gauge>,
    deliveries: Family<Labels, Counter>,
}

fn service(name: &str) -> Labels {
    vec![("service", name.to_string())]
}

fn with_result(name: &str, result: DeliveryResult) -> Labels {
    vec![
        ("service", name.to_string()),
        ("result", result.as_str().into()),
    ]
}

impl RuleMetrics {
    /// Register every rule metric into `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rule_files",
            "Rule files in effect for every node of a service",
            self.files.clone(),
        );
        registry.register(
            "rule_files_refused",
            "Rule files the last pass refused (validation failed or unreadable; the last good version stays)",
            self.refused.clone(),
        );
        registry.register(
            "rule_deliveries",
            "Deliveries of a service's rule set to a node, by result",
            self.deliveries.clone(),
        );
    }

    /// Record the rules step of a pass.
    pub fn record(&self, name: &str, r: &RulesReport) {
        self.files
            .get_or_create(&service(name))
            .set(r.files.len() as i64);
        self.refused
            .get_or_create(&service(name))
            .set(r.problems.len() as i64);
        for d in &r.deliveries {
            self.deliveries
                .get_or_create(&with_result(name, d.result))
                .inc();
        }
    }

    /// Drop the series of a removed service.
    pub fn forget(&self, name: &str) {
        self.files.remove(&service(name));
        self.refused.remove(&service(name));
        for result in DeliveryResult::ALL {
            self.deliveries.remove(&with_result(name, result));
        }
    }
}
