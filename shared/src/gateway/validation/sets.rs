//! The texts a validation embeds, shipped in the binary: a golden set of 64
//! varied texts (questions, phrases, single words, code, numbers, emoji, long
//! paragraphs, several languages) and a corpus of 200 short passages on twenty
//! topics that the golden items search (`shared/data/validation/*.jsonl`, one
//! `{"id", "text"}` object a line).

use std::sync::OnceLock;

use serde::Deserialize;

use crate::error::{ApiError, ApiResult};

const GOLDEN: &str = include_str!("../../../data/validation/golden.jsonl");
const CORPUS: &str = include_str!("../../../data/validation/corpus.jsonl");

/// One text of a set.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub id: String,
    pub text: String,
}

/// The golden set and the corpus.
#[derive(Debug)]
pub struct Sets {
    pub golden: Vec<Item>,
    pub corpus: Vec<Item>,
}

impl Sets {
    /// Every item's id: the golden set's, then the corpus's.
    pub fn ids(&self) -> Vec<&str> {
        self.golden
            .iter()
            .chain(&self.corpus)
            .map(|i| i.id.as_str())
            .collect()
    }
}

fn parse(name: &str, text: &str) -> Result<Vec<Item>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: Item =
            serde_json::from_str(line).map_err(|e| format!("{name} line {}: {e}", n + 1))?;
        if item.text.trim().is_empty() {
            return Err(format!("{name} line {}: an empty text", n + 1));
        }
        out.push(item);
    }
    Ok(out)
}

fn load() -> Result<Sets, String> {
    Ok(Sets {
        golden: parse("golden.jsonl", GOLDEN)?,
        corpus: parse("corpus.jsonl", CORPUS)?,
    })
}

/// The sets, parsed once (a unit test keeps the shipped files parseable).
pub fn sets() -> ApiResult<&'static Sets> {
    static SETS: OnceLock<Result<Sets, String>> = OnceLock::new();
    SETS.get_or_init(load)
        .as_ref()
        .map_err(|e| ApiError::Internal(format!("the validation sets do not parse: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_shipped_sets_parse_and_are_what_they_say() {
        let s = sets().unwrap();
        assert_eq!((s.golden.len(), s.corpus.len()), (64, 200));
        let ids: HashSet<_> = s.ids().into_iter().collect();
        assert_eq!(ids.len(), 264, "ids are unique");
        let texts: HashSet<_> = s.golden.iter().chain(&s.corpus).map(|i| &i.text).collect();
        assert_eq!(texts.len(), 264, "texts are unique");
        assert!(s.golden.iter().all(|i| i.id.starts_with('g')));
        assert!(s.corpus.iter().all(|i| i.id.starts_with('c')));
        // Varied lengths: single words to paragraphs, all within the model's limit.
        let lens: Vec<usize> = s.golden.iter().map(|i| i.text.len()).collect();
        assert!(lens.iter().any(|&l| l < 10) && lens.iter().any(|&l| l > 300));
        assert!(lens.iter().all(|&l| l < 1500));
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(parse("x", "{\"id\":\"a\",\"text\":\"t\"}\n\n").is_ok());
        assert!(parse("x", "{\"id\":\"a\"}")
            .unwrap_err()
            .contains("x line 1"));
        assert!(parse("x", "{\"id\":\"a\",\"text\":\" \"}").is_err());
    }
}
