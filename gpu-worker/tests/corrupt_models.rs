//! Corrupt model files: whatever bytes stand in a model's GGUF or safetensors
//! file (random bytes, a real header cut short or with bytes changed, a header
//! declaring absurd counts, lengths, shapes, offsets or alignment), loading it is
//! a clear `ArtifactError`, never a panic or an allocation the file cannot back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::path::Path;
use std::sync::OnceLock;

use gpu_worker::chat::gguf::GgufFile;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Cases run per property, failures kept in
/// `tests/proptest-regressions/corrupt_models.txt`.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/corrupt_models.txt",
        ))),
        ..ProptestConfig::with_cases(cases)
    }
}

/// The first bytes of the real chat model: its whole header and metadata, and
/// the start of its tensor data.
fn real_gguf_head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        use std::io::Read;
        let path = common::chat_model_dir().join("model.gguf");
        let mut head = Vec::new();
        std::fs::File::open(path)
            .unwrap()
            .take(4 << 20)
            .read_to_end(&mut head)
            .unwrap();
        head
    })
}

/// Opens `bytes` as a GGUF file and, when that succeeds, reads every tensor it
/// declares at the shape it declares; the first error, if any.
fn load_gguf(bytes: &[u8]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, bytes).unwrap();
    let mut file = GgufFile::open(&path).map_err(|e| e.to_string())?;
    let infos: Vec<(String, Vec<usize>)> = file
        .content
        .tensor_infos
        .iter()
        .take(8)
        .map(|(n, i)| (n.clone(), i.shape.dims().to_vec()))
        .collect();
    for (name, declared) in infos {
        // Read at the declared shape when it is plausible (the loader asks for
        // the shape the hyper-parameters give), else at another one.
        let plausible = declared
            .iter()
            .try_fold(1usize, |n, d| n.checked_mul(*d))
            .is_some_and(|n| n <= 1 << 20);
        let shape = if plausible { declared } else { vec![1] };
        file.tensor(&name, &shape).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A GGUF v3 header: counts as given, then `kvs` (key, type, raw value) and
/// `tensors` (name, dims, dtype, offset), then `tail`.
#[derive(Clone, Debug)]
struct Header {
    tensor_count: u64,
    kv_count: u64,
    kvs: Vec<(String, u32, Vec<u8>)>,
    tensors: Vec<(String, Vec<u64>, u32, u64)>,
    tail: Vec<u8>,
}

fn gguf_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl Header {
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&self.tensor_count.to_le_bytes());
        out.extend_from_slice(&self.kv_count.to_le_bytes());
        for (key, kind, value) in &self.kvs {
            gguf_string(&mut out, key);
            out.extend_from_slice(&kind.to_le_bytes());
            out.extend_from_slice(value);
        }
        for (name, dims, dtype, offset) in &self.tensors {
            gguf_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&dtype.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

/// A metadata value of any type, with any (often absurd) length prefix.
fn any_kv() -> impl Strategy<Value = (String, u32, Vec<u8>)> {
    let key = prop::sample::select(vec![
        "general.alignment",
        "general.architecture",
        "llama.block_count",
        "tokenizer.ggml.tokens",
        "x",
    ]);
    let value = prop_oneof![
        // u32 (type 4) of any value: an alignment of 0 among them.
        any::<u32>().prop_map(|v| (4u32, v.to_le_bytes().to_vec())),
        Just((4u32, 0u32.to_le_bytes().to_vec())),
        // a string (type 8) whose length prefix may lie.
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..16)).prop_map(|(n, b)| {
            let mut v = n.to_le_bytes().to_vec();
            v.extend(b);
            (8u32, v)
        }),
        // an array (type 9) of any element type and any declared length.
        (
            any::<u32>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(|(t, n, b)| {
                let mut v = (t % 13).to_le_bytes().to_vec();
                v.extend_from_slice(&n.to_le_bytes());
                v.extend(b);
                (9u32, v)
            }),
        // any type tag at all.
        (any::<u32>(), prop::collection::vec(any::<u8>(), 0..16)),
    ];
    (key, value).prop_map(|(k, (t, v))| (k.to_string(), t, v))
}

/// A tensor declaration: up to six dims of any size, any dtype, any offset.
fn any_tensor() -> impl Strategy<Value = (String, Vec<u64>, u32, u64)> {
    let dim = prop_oneof![1u64..64, any::<u64>(), Just(u64::MAX), Just(1 << 32)];
    (
        "[a-z.]{1,12}",
        prop::collection::vec(dim, 0..6),
        prop_oneof![0u32..16, any::<u32>()],
        prop_oneof![0u64..4096, any::<u64>()],
    )
}

fn any_header() -> impl Strategy<Value = Header> {
    (
        prop::collection::vec(any_kv(), 0..4),
        prop::collection::vec(any_tensor(), 0..3),
        prop::collection::vec(any::<u8>(), 0..256),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(kvs, tensors, tail, honest, lie)| Header {
            kv_count: if honest { kvs.len() as u64 } else { lie },
            tensor_count: if honest { tensors.len() as u64 } else { lie },
            kvs,
            tensors,
            tail,
        })
}

/// The check before candle's reader passes the real model's header.
#[test]
fn the_real_chat_model_still_opens() {
    let file = GgufFile::open(&common::chat_model_dir().join("model.gguf")).unwrap();
    assert!(file.has_tensor("token_embd.weight"));
}

/// The header that once panicked the loader (candle divides by it).
#[test]
fn an_alignment_of_zero_is_a_load_error() {
    for value in [0u32, 3, 48] {
        let h = Header {
            tensor_count: 0,
            kv_count: 1,
            kvs: vec![("general.alignment".into(), 4, value.to_le_bytes().to_vec())],
            tensors: vec![],
            tail: vec![],
        };
        let err = load_gguf(&h.bytes()).unwrap_err();
        assert!(err.contains("power of two"), "{err}");
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn random_bytes_are_a_load_error(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(load_gguf(&bytes).is_err());
    }

    #[test]
    fn absurd_headers_are_a_load_error(h in any_header()) {
        // Never a panic; none of these is a llama model.
        prop_assert!(load_gguf(&h.bytes()).is_err());
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn a_real_header_cut_short_is_a_load_error(len in 0usize..(4 << 20)) {
        prop_assert!(load_gguf(&real_gguf_head()[..len]).is_err());
    }

    #[test]
    fn a_real_header_with_bytes_changed_loads_or_fails_cleanly(
        changes in prop::collection::vec((0usize..(1 << 20), any::<u8>()), 1..8),
        len in (1usize << 20)..(4 << 20),
    ) {
        let mut bytes = real_gguf_head()[..len].to_vec();
        for (at, b) in changes {
            bytes[at % len] = b;
        }
        // The tensor data is cut short: it cannot load, and it must not panic.
        prop_assert!(load_gguf(&bytes).is_err());
    }
}

/// A copy of the embedding model's directory with `weights` as its
/// safetensors file (its manifest rewritten to match).
fn embedding_dir_with(weights: &[u8]) -> tempfile::TempDir {
    let real = common::model_dir();
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = serde_json::Map::new();
    for file in gpu_worker::artifacts::REQUIRED_FILES
        .iter()
        .chain(["modules.json"].iter())
    {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        if *file == "model.safetensors" {
            std::fs::write(&to, weights).unwrap();
        } else {
            std::fs::copy(real.join(file), &to).unwrap();
        }
        let sum = gpu_worker::artifacts::sha256_file(&to).unwrap();
        manifest.insert(file.to_string(), sum.into());
    }
    std::fs::write(
        dir.path().join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    dir
}

fn real_safetensors_head() -> &'static [u8] {
    static HEAD: OnceLock<Vec<u8>> = OnceLock::new();
    HEAD.get_or_init(|| {
        use std::io::Read;
        let mut head = Vec::new();
        std::fs::File::open(common::model_dir().join("model.safetensors"))
            .unwrap()
            .take(256 << 10)
            .read_to_end(&mut head)
            .unwrap();
        head
    })
}

fn load_embedding(dir: &Path) -> Result<(), String> {
    let device = candle_core::Device::Cpu;
    gpu_worker::model::load(dir, &device, 1)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A safetensors header: its length prefix (true or not) and JSON of any shape.
fn any_safetensors() -> impl Strategy<Value = Vec<u8>> {
    let entry = (
        prop::sample::select(vec!["F32", "F16", "I64", "U8", "BOGUS"]),
        prop::collection::vec(prop_oneof![0u64..512, any::<u64>()], 0..4),
        prop_oneof![0u64..4096, any::<u64>()],
        prop_oneof![0u64..4096, any::<u64>()],
    )
        .prop_map(|(dtype, shape, a, b)| {
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]})
        });
    (
        prop::collection::btree_map("[a-z.]{1,24}", entry, 0..4),
        prop::option::of(any::<u64>()),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(tensors, lie, data)| {
            let json = serde_json::to_vec(&tensors).unwrap();
            let n = lie.unwrap_or(json.len() as u64);
            let mut out = n.to_le_bytes().to_vec();
            out.extend(json);
            out.extend(data);
            out
        })
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn corrupt_safetensors_are_a_load_error(
        weights in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..1024),
            any_safetensors(),
            (0usize..(256 << 10)).prop_map(|n| real_safetensors_head()[..n].to_vec()),
        ],
    ) {
        let dir = embedding_dir_with(&weights);
        let loaded = load_embedding(dir.path());
        prop_assert!(loaded.is_err(), "loaded {} bytes of weights", weights.len());
    }
}
