//! What a usage chart shows: one metric (requests, tokens or cost) for every
//! day of a range, split into series by model and by class: embeddings and
//! chat called directly, and batch lines (of either kind) apart.
//!
//! A model's kind comes from the registry; what batch lines added comes from
//! the aggregates' `batch_*` counters, the rest of each counter is direct use.

use std::collections::BTreeMap;

use time::{Date, Duration};

use crate::billing::metering::{format_day, Aggregate};
use crate::error::{ApiError, ApiResult};
use crate::gateway::models::ModelKind;

/// The quantity a chart plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Requests,
    /// Prompt and completion tokens.
    Tokens,
    /// Micro-dollars.
    Cost,
}

impl Metric {
    pub fn parse(s: Option<&str>) -> ApiResult<Metric> {
        match s.unwrap_or("requests") {
            "requests" => Ok(Metric::Requests),
            "tokens" => Ok(Metric::Tokens),
            "cost" => Ok(Metric::Cost),
            other => Err(ApiError::invalid_param(
                "metric",
                format!("metric must be requests, tokens or cost, not '{other}'"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Requests => "requests",
            Metric::Tokens => "tokens",
            Metric::Cost => "cost",
        }
    }

    /// A bucket's value split into (direct use, batch lines).
    fn split(self, counters: &BTreeMap<String, u64>) -> (u64, u64) {
        let c = |k: &str| counters.get(k).copied().unwrap_or(0);
        let (all, batch) = match self {
            Metric::Requests => (c("requests"), c("batch_requests")),
            Metric::Tokens => (
                c("tokens").saturating_add(c("completion_tokens")),
                c("batch_tokens").saturating_add(c("batch_completion_tokens")),
            ),
            Metric::Cost => (c("cost_micros"), c("batch_cost_micros")),
        };
        (all.saturating_sub(batch), batch)
    }
}

/// How a series was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Embeddings,
    Chat,
    Batch,
    /// A model the registry no longer knows.
    Other,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Embeddings => "embeddings",
            Class::Chat => "chat",
            Class::Batch => "batch",
            Class::Other => "other",
        }
    }
}

/// One model used one way, a value per day of the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub model: String,
    pub class: Class,
    pub values: Vec<u64>,
}

impl Series {
    pub fn total(&self) -> u64 {
        self.values.iter().fold(0u64, |a, v| a.saturating_add(*v))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    pub metric: Metric,
    /// Every day of the range, YYYY-MM-DD.
    pub days: Vec<String>,
    /// Series with any use, ordered by class, then model.
    pub series: Vec<Series>,
}

impl Chart {
    /// The stacked total of each day.
    pub fn day_totals(&self) -> Vec<u64> {
        (0..self.days.len())
            .map(|i| {
                self.series
                    .iter()
                    .fold(0u64, |a, s| a.saturating_add(s.values[i]))
            })
            .collect()
    }

    pub fn total(&self) -> u64 {
        self.series
            .iter()
            .fold(0u64, |a, s| a.saturating_add(s.total()))
    }
}

/// The chart of `metric` over `from..=to` from a tenant's aggregates; `kinds`
/// names each model's kind.
pub fn build(
    aggregates: &[Aggregate],
    kinds: &BTreeMap<String, ModelKind>,
    from: Date,
    to: Date,
    metric: Metric,
) -> Chart {
    let mut days = Vec::new();
    let mut day = from;
    while day <= to {
        days.push(format_day(day));
        match day.checked_add(Duration::days(1)) {
            Some(next) => day = next,
            None => break,
        }
    }
    let index: BTreeMap<&str, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let mut series: BTreeMap<(Class, String), Vec<u64>> = BTreeMap::new();
    for agg in aggregates {
        let Some(&i) = index.get(agg.day.as_str()) else {
            continue;
        };
        let direct_class = match kinds.get(&agg.model) {
            Some(ModelKind::Embedding) => Class::Embeddings,
            Some(ModelKind::Chat) => Class::Chat,
            None => Class::Other,
        };
        let (direct, batch) = metric.split(&agg.counters);
        for (class, v) in [(direct_class, direct), (Class::Batch, batch)] {
            if v == 0 {
                continue;
            }
            let values = series
                .entry((class, agg.model.clone()))
                .or_insert_with(|| vec![0; days.len()]);
            values[i] = values[i].saturating_add(v);
        }
    }
    Chart {
        metric,
        days,
        series: series
            .into_iter()
            .map(|((class, model), values)| Series {
                model,
                class,
                values,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    fn agg(day: &str, model: &str, pairs: &[(&str, u64)]) -> Aggregate {
        Aggregate {
            day: day.into(),
            model: model.into(),
            counters: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn splits_direct_use_from_batch_lines_by_the_registry_kind() {
        let kinds = BTreeMap::from([
            ("emb".to_string(), ModelKind::Embedding),
            ("talk".to_string(), ModelKind::Chat),
        ]);
        let rows = [
            agg(
                "2026-11-02",
                "emb",
                &[("requests", 7), ("batch_requests", 3), ("cost_micros", 9)],
            ),
            agg(
                "2026-11-03",
                "talk",
                &[
                    ("requests", 2),
                    ("tokens", 10),
                    ("completion_tokens", 5),
                    ("batch_tokens", 4),
                    ("batch_completion_tokens", 1),
                ],
            ),
            agg("2026-11-03", "gone", &[("requests", 1)]),
            agg("2026-10-31", "emb", &[("requests", 100)]),
        ];
        let (from, to) = (date!(2026 - 11 - 01), date!(2026 - 11 - 03));
        let requests = build(&rows, &kinds, from, to, Metric::Requests);
        assert_eq!(requests.days, ["2026-11-01", "2026-11-02", "2026-11-03"]);
        let got: Vec<_> = requests
            .series
            .iter()
            .map(|s| (s.class, s.model.as_str(), s.values.clone()))
            .collect();
        assert_eq!(
            got,
            [
                (Class::Embeddings, "emb", vec![0, 4, 0]),
                (Class::Chat, "talk", vec![0, 0, 2]),
                (Class::Batch, "emb", vec![0, 3, 0]),
                (Class::Other, "gone", vec![0, 0, 1]),
            ]
        );
        assert_eq!(requests.day_totals(), [0, 7, 3]);
        assert_eq!(requests.total(), 10);
        let tokens = build(&rows, &kinds, from, to, Metric::Tokens);
        let got: Vec<_> = tokens.series.iter().map(|s| (s.class, s.total())).collect();
        assert_eq!(got, [(Class::Chat, 10), (Class::Batch, 5)]);
        assert_eq!(build(&rows, &kinds, from, to, Metric::Cost).total(), 9);
        assert!(Metric::parse(Some("euros")).is_err());
        assert_eq!(Metric::parse(None).unwrap(), Metric::Requests);
    }
}
