//! The validation gate of the model lifecycle: before a version receives
//! traffic (promotion, a canary weight above zero, a live version's new
//! endpoint), its embeddings of a golden set and a corpus are compared with the
//! live version's, through both versions' registered backends (the calls the
//! request pipeline makes; no cache, nothing billed). The candidate passes when
//! every item's cosine reaches its precision's threshold and the golden items'
//! top-10 neighbours over the corpus agree on average (see [`Thresholds`]).
//! Chat versions, and versions with no live version to compare against, are
//! `skipped` (and allowed); a backend that fails is a refusal.

pub mod figures;
pub mod gate;
pub mod sets;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::App;
use crate::error::ApiResult;
use crate::gateway::backend::BackendFailure;
use crate::gateway::embeddings::{EmbeddingRequest, EncodingFormat, Input};
use crate::gateway::models::{ModelKind, ModelVersion, Precision};
use crate::gateway::pipeline::Endpoint;
use crate::store::now_secs;
pub use figures::Figures;

/// Texts sent to a backend per call.
const CHUNK: usize = 32;

/// What a validation concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The candidate agrees with the live version.
    Passed,
    /// It does not, or it could not be compared (a backend failed).
    Refused,
    /// Nothing to compare (a chat model, or no live version): allowed.
    Skipped,
}

/// What the validation was run for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// The validate action itself.
    Validate,
    Promote,
    /// A canary weight above zero (set, or the canary's endpoint changed).
    Canary,
    /// A live version's endpoint changed (compared with the old endpoint).
    Endpoint,
    /// Registering a version live or as a weighted canary.
    Register,
}

/// Pass marks: every item's cosine at least `min_cosine`, and the golden
/// items' top-10 overlap at least `min_mean_overlap` on average.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Thresholds {
    pub min_cosine: f64,
    pub min_mean_overlap: f64,
}

/// Mean top-10 overlap a candidate needs, whatever its precision.
pub const MIN_MEAN_OVERLAP: f64 = 0.95;

impl Thresholds {
    /// By the candidate's declared precision: 0.999 for bf16, 0.99 for int8,
    /// and 0.999 for f32 or none declared (an f32 version on other hardware or
    /// another kernel differs from the live one by rounding, far above 0.999).
    pub fn for_precision(p: Option<Precision>) -> Self {
        let min_cosine = match p {
            Some(Precision::Int8) => 0.99,
            Some(Precision::Bf16) | Some(Precision::F32) | None => 0.999,
        };
        Thresholds {
            min_cosine,
            min_mean_overlap: MIN_MEAN_OVERLAP,
        }
    }
}

/// A validation's result, as stored on the version and in the audit log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Validation {
    pub outcome: Outcome,
    /// Why, in words.
    pub reason: String,
    pub purpose: Purpose,
    /// The candidate version (`model@version`) and the endpoint it was reached at.
    pub candidate: String,
    pub candidate_endpoint: String,
    /// The live version compared against (`model@version`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against_endpoint: Option<String>,
    /// The candidate's declared precision (none: f32 thresholds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// Absent when nothing was compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
    /// Unix seconds.
    pub at: i64,
}

impl Validation {
    fn new(candidate: &ModelVersion, against: Option<&ModelVersion>, purpose: Purpose) -> Self {
        Validation {
            outcome: Outcome::Skipped,
            reason: String::new(),
            purpose,
            candidate: label(candidate),
            candidate_endpoint: candidate.endpoint.clone(),
            against: against.map(label),
            against_endpoint: against.map(|v| v.endpoint.clone()),
            precision: candidate.precision,
            thresholds: None,
            figures: None,
            at: now_secs(),
        }
    }

    pub fn allows(&self) -> bool {
        self.outcome != Outcome::Refused
    }

    /// The outcome in one sentence.
    pub fn message(&self) -> String {
        let outcome = match self.outcome {
            Outcome::Passed => "passed",
            Outcome::Refused => "refused",
            Outcome::Skipped => "skipped",
        };
        match &self.against {
            Some(live) => format!(
                "validation of {} against {live} {outcome}: {}",
                self.candidate, self.reason
            ),
            None => format!(
                "validation of {} {outcome}: {}",
                self.candidate, self.reason
            ),
        }
    }
}

fn label(v: &ModelVersion) -> String {
    format!("{}@{}", v.model, v.version)
}

/// The live version `candidate` would replace: the model's live version other
/// than itself (the most recently promoted, should there be several).
pub async fn live_counterpart(
    app: &App,
    candidate: &ModelVersion,
) -> ApiResult<Option<ModelVersion>> {
    app.registry.invalidate();
    let all = app.registry.all().await?;
    Ok(all
        .iter()
        .filter(|v| {
            v.model == candidate.model
                && v.version != candidate.version
                && v.status == crate::gateway::models::VersionStatus::Live
        })
        .max_by_key(|v| (v.promoted_at, v.created_at))
        .cloned())
}

/// Compares `candidate` with `against` (the live version, or the live version
/// as it was before a change): embeds both sets with both and judges the figures.
pub async fn check(
    app: &App,
    candidate: &ModelVersion,
    against: Option<&ModelVersion>,
    purpose: Purpose,
) -> ApiResult<Validation> {
    let mut result = Validation::new(candidate, against, purpose);
    let Some(live) = against else {
        result.reason = format!(
            "no live version of '{}' to compare against: nothing to validate",
            candidate.model
        );
        return Ok(result);
    };
    if candidate.kind == ModelKind::Chat || live.kind == ModelKind::Chat {
        result.reason = "chat versions are not compared: the gate compares embeddings".to_string();
        return Ok(result);
    }
    let sets = sets::sets()?;
    let thresholds = Thresholds::for_precision(candidate.precision);
    result.thresholds = Some(thresholds);
    result.outcome = Outcome::Refused;
    let (mine, theirs) = tokio::join!(embed_sets(app, candidate), embed_sets(app, live));
    let (mine, theirs) = match (mine, theirs) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) => {
            result.reason = format!("the candidate's backend failed: {e}");
            return Ok(result);
        }
        (_, Err(e)) => {
            result.reason = format!("the live version's backend failed: {e}");
            return Ok(result);
        }
    };
    let dim = |v: &[Vec<f32>]| v.first().map_or(0, Vec::len);
    let (dim_c, dim_l) = (dim(&mine.0), dim(&theirs.0));
    if dim_c != dim_l {
        result.reason =
            format!("the candidate's vectors have {dim_c} dimensions, the live version's {dim_l}");
        return Ok(result);
    }
    let f = figures::compare(
        &figures::Vectors {
            golden: &mine.0,
            corpus: &mine.1,
        },
        &figures::Vectors {
            golden: &theirs.0,
            corpus: &theirs.1,
        },
        &sets.ids(),
    );
    result.reason = judge(&f, &thresholds);
    if f.cosine_min >= thresholds.min_cosine && f.overlap_mean >= thresholds.min_mean_overlap {
        result.outcome = Outcome::Passed;
    }
    result.figures = Some(f);
    Ok(result)
}

/// The figures against the thresholds, in words.
fn judge(f: &Figures, t: &Thresholds) -> String {
    let mark = |ok: bool| if ok { ">=" } else { "<" };
    format!(
        "cosine min {:.5} {} {} (worst item {}), mean {:.5}; top-{} overlap mean {:.3} {} {}, min {:.2}",
        f.cosine_min,
        mark(f.cosine_min >= t.min_cosine),
        t.min_cosine,
        f.worst_item,
        f.cosine_mean,
        f.k,
        f.overlap_mean,
        mark(f.overlap_mean >= t.min_mean_overlap),
        t.min_mean_overlap,
        f.overlap_min
    )
}

/// The version's vectors of the golden set and of the corpus.
async fn embed_sets(app: &App, v: &ModelVersion) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>), String> {
    let sets = sets::sets().map_err(|e| e.to_string())?;
    let golden: Vec<&str> = sets.golden.iter().map(|i| i.text.as_str()).collect();
    let corpus: Vec<&str> = sets.corpus.iter().map(|i| i.text.as_str()).collect();
    Ok((embed(app, v, &golden).await?, embed(app, v, &corpus).await?))
}

/// Embeds `texts` with the version's backend, [`CHUNK`] at a time.
async fn embed(app: &App, v: &ModelVersion, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(CHUNK) {
        let req = EmbeddingRequest {
            model: v.model.clone(),
            input: Input::Texts(chunk.iter().map(|s| s.to_string()).collect()),
            encoding_format: EncodingFormat::Base64,
            user: None,
            dimensions: None,
            truncate: true,
        };
        let answer = req.call(app, v).await.map_err(|f| match f {
            BackendFailure::Rejected(e) => format!("it refused the input: {e}"),
            BackendFailure::Down { message, .. } => message,
        })?;
        if answer.vectors.len() != chunk.len() || answer.vectors.iter().any(Vec::is_empty) {
            return Err(format!(
                "it answered {} vectors for {} texts",
                answer.vectors.len(),
                chunk.len()
            ));
        }
        out.extend(answer.vectors.iter().cloned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_follow_the_declared_precision() {
        assert_eq!(Thresholds::for_precision(None).min_cosine, 0.999);
        assert_eq!(
            Thresholds::for_precision(Some(Precision::F32)).min_cosine,
            0.999
        );
        assert_eq!(
            Thresholds::for_precision(Some(Precision::Bf16)).min_cosine,
            0.999
        );
        assert_eq!(
            Thresholds::for_precision(Some(Precision::Int8)).min_cosine,
            0.99
        );
        assert_eq!(
            Thresholds::for_precision(Some(Precision::Int8)).min_mean_overlap,
            0.95
        );
    }

    #[test]
    fn the_judgement_names_what_failed() {
        let f = Figures {
            items: 264,
            cosine_min: 0.98,
            cosine_mean: 0.995,
            worst_item: "g007".into(),
            queries: 64,
            corpus: 200,
            k: 10,
            overlap_mean: 0.97,
            overlap_min: 0.8,
        };
        let t = Thresholds::for_precision(Some(Precision::Int8));
        let words = judge(&f, &t);
        assert!(words.contains("cosine min 0.98000 < 0.99"), "{words}");
        assert!(words.contains("worst item g007"), "{words}");
        assert!(words.contains("overlap mean 0.970 >= 0.95"), "{words}");
    }
}
