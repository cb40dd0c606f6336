//! The products against plain ones, on the oneMKL that `TENANTAI_MKL_LIB` names.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

/// The library named by `TENANTAI_MKL_LIB`. Without it these tests have
/// nothing to call, unless `TENANTAI_REQUIRE_MKL=1` (CI) makes that a failure.
fn mkl() -> Option<Mkl> {
    let required = std::env::var("TENANTAI_REQUIRE_MKL").is_ok_and(|v| v == "1");
    match std::env::var_os("TENANTAI_MKL_LIB") {
        Some(path) => Some(Mkl::open(Some(Path::new(&path))).unwrap()),
        None if required => panic!("TENANTAI_REQUIRE_MKL=1 but TENANTAI_MKL_LIB is unset"),
        None => {
            eprintln!("TENANTAI_MKL_LIB is unset: oneMKL's products are not exercised");
            None
        }
    }
}

fn values(len: usize, seed: u32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s as f32 / u32::MAX as f32 - 0.5
        })
        .collect()
}

fn product(a: &[f64], b: &[f64], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[j * k + p]).sum();
        }
    }
    c
}

fn bf16_bits(x: f32) -> u16 {
    // Round to nearest even on the upper 16 bits (no NaNs in these inputs).
    let bits = x.to_bits();
    ((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

fn widen(bits: u16) -> f64 {
    f32::from_bits((bits as u32) << 16) as f64
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let err = Mkl::open(Some(Path::new("/nonexistent/libmkl_rt.so.2"))).unwrap_err();
    assert!(matches!(err, Error::Open { .. }));
    assert!(
        err.to_string().contains("/nonexistent/libmkl_rt.so.2"),
        "{err}"
    );
}

#[test]
fn the_three_products_match_a_plain_one() {
    let Some(mkl) = mkl() else { return };
    assert!(
        mkl.version().contains("oneMKL") || mkl.version().contains("Math Kernel"),
        "{}",
        mkl.version()
    );
    let (m, n, k) = (37, 53, 96);
    let (a, b) = (values(m * k, 1), values(n * k, 2));
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();

    // f32, adding to what `c` held.
    let want = product(&wide(&a), &wide(&b), m, n, k);
    let mut c = vec![1f32; m * n];
    mkl.f32_gemm(m, n, k, &a, &b, &mut c);
    for (got, want) in c.iter().zip(&want) {
        assert!(
            (*got as f64 - (want + 1.0)).abs() < 1e-4,
            "{got} vs {}",
            want + 1.0
        );
    }

    // bf16: exact products of the rounded inputs, accumulated in f32.
    let (ab, bb): (Vec<u16>, Vec<u16>) = (
        a.iter().map(|&x| bf16_bits(x)).collect(),
        b.iter().map(|&x| bf16_bits(x)).collect(),
    );
    let want = product(
        &ab.iter().map(|&x| widen(x)).collect::<Vec<_>>(),
        &bb.iter().map(|&x| widen(x)).collect::<Vec<_>>(),
        m,
        n,
        k,
    );
    let mut c = vec![0f32; m * n];
    mkl.bf16_gemm(m, n, k, &ab, &bb, &mut c);
    for (got, want) in c.iter().zip(&want) {
        assert!((*got as f64 - want).abs() < 1e-4, "{got} vs {want}");
    }

    // u8 x s8: exact.
    let au: Vec<u8> = a.iter().map(|&x| ((x + 0.5) * 255.0) as u8).collect();
    let bs: Vec<i8> = b.iter().map(|&x| (x * 254.0) as i8).collect();
    let want = product(
        &au.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        &bs.iter().map(|&x| x as f64).collect::<Vec<_>>(),
        m,
        n,
        k,
    );
    let mut c = vec![7i32; m * n];
    mkl.u8s8_gemm(m, n, k, &au, &bs, &mut c);
    assert_eq!(c, want.iter().map(|&x| x as i32).collect::<Vec<_>>());
}

#[test]
fn packed_weights_give_the_same_products_at_any_row_count() {
    let Some(mkl) = mkl() else { return };
    let (n, k) = (48, 160);
    let w = values(n * k, 5);
    let wb: Vec<u16> = w.iter().map(|&x| bf16_bits(x)).collect();
    let ws: Vec<i8> = w.iter().map(|&x| (x * 254.0) as i8).collect();
    let (pb, ps) = (mkl.pack_bf16(n, k, &wb), mkl.pack_s8(n, k, &ws));
    assert_eq!(pb.shape(), (n, k));
    for m in [1, 7, 64, 513, 1200] {
        let a = values(m * k, m as u32);
        let ab: Vec<u16> = a.iter().map(|&x| bf16_bits(x)).collect();
        let (mut want, mut got) = (vec![0f32; m * n], vec![0f32; m * n]);
        mkl.bf16_gemm(m, n, k, &ab, &wb, &mut want);
        mkl.bf16_gemm_packed(m, &ab, &pb, &mut got);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "bf16, {m} rows: {worst}");
        let au: Vec<u8> = a.iter().map(|&x| ((x + 0.5) * 255.0) as u8).collect();
        let (mut want, mut got) = (vec![0i32; m * n], vec![1i32; m * n]);
        mkl.u8s8_gemm(m, n, k, &au, &ws, &mut want);
        mkl.u8s8_gemm_packed(m, &au, &ps, &mut got);
        assert_eq!(want, got, "int8, {m} rows");
    }
}

#[test]
fn short_operands_are_refused_before_the_call() {
    let Some(mkl) = mkl() else { return };
    let result = std::panic::catch_unwind(|| {
        let mut c = vec![0f32; 4];
        mkl.f32_gemm(2, 2, 3, &[0.0; 5], &[0.0; 6], &mut c);
    });
    assert!(result.is_err());
}

/// `c (m x n) = a · b` in f64 from strided views (a: m x k, b: k x n).
fn strided_product<T: Copy>(
    (m, n, k): (usize, usize, usize),
    a: View<T>,
    b: View<T>,
    wide: impl Fn(T) -> f64,
) -> Vec<f64> {
    let at = |v: &View<T>, i: usize, j: usize| {
        let (r, c) = if v.transposed { (j, i) } else { (i, j) };
        wide(v.data[r * v.ld + c])
    };
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| at(&a, i, p) * at(&b, p, j)).sum();
        }
    }
    c
}

/// `got` (rows `ld` wide, filled with -3 before the call) holds `want`
/// (`m x n`) from column 4 on, and -3 everywhere else.
fn assert_in_view(got: &[f32], ld: usize, (_, n, _): (usize, usize, usize), want: &[f64]) {
    for (r, row) in got.chunks_exact(ld).enumerate() {
        for (c, &g) in row.iter().enumerate() {
            if (4..4 + n).contains(&c) {
                let w = want[r * n + c - 4];
                assert!((g as f64 - w).abs() < 1e-4, "{g} vs {w}");
            } else {
                assert_eq!(g, -3.0, "row {r}, column {c} is outside the view");
            }
        }
    }
}

#[test]
fn strided_views_read_and_write_only_their_elements() {
    let Some(mkl) = mkl() else { return };
    // One attention head's shapes: queries, keys and values are columns 8..24 of
    // rows 40 wide; the output is columns 4.. of rows 64 wide.
    let (len, d, ld, out_ld) = (50, 16, 40, 64);
    let (buf, p) = (values(len * ld, 9), values(len * len, 10));
    let (bits, p16): (Vec<u16>, Vec<u16>) = (
        buf.iter().map(|&x| bf16_bits(x)).collect(),
        p.iter().map(|&x| bf16_bits(x)).collect(),
    );
    // scores (len x len) = q · kᵀ, then (len x d) = p · v.
    let cases = [
        (
            (len, len, d),
            (View::rows(&buf[8..], ld), View::transpose(&buf[8..], ld)),
            (View::rows(&bits[8..], ld), View::transpose(&bits[8..], ld)),
        ),
        (
            (len, d, len),
            (View::rows(&p[..], len), View::rows(&buf[8..], ld)),
            (View::rows(&p16[..], len), View::rows(&bits[8..], ld)),
        ),
    ];
    for (dims, (a, b), (a16, b16)) in cases {
        let m = dims.0;
        let mut out = vec![-3f32; m * out_ld];
        let c = ViewMut {
            data: &mut out[4..],
            ld: out_ld,
        };
        mkl.f32_strided(dims, a, b, 0.0, c);
        assert_in_view(
            &out,
            out_ld,
            dims,
            &strided_product(dims, a, b, |x| x as f64),
        );
        let mut out16 = vec![-3f32; m * out_ld];
        let c = ViewMut {
            data: &mut out16[4..],
            ld: out_ld,
        };
        mkl.bf16_strided(dims, a16, b16, 0.0, c);
        assert_in_view(
            &out16,
            out_ld,
            dims,
            &strided_product(dims, a16, b16, widen),
        );
    }
    // beta = 1 adds to what the output held.
    let (q, k) = (View::rows(&buf[8..], ld), View::transpose(&buf[8..], ld));
    let mut c = vec![1f32; len * len];
    mkl.f32_strided(
        (len, len, d),
        q,
        k,
        1.0,
        ViewMut {
            data: &mut c,
            ld: len,
        },
    );
    let want = strided_product((len, len, d), q, k, |x| x as f64);
    assert!(c
        .iter()
        .zip(&want)
        .all(|(g, w)| (*g as f64 - (w + 1.0)).abs() < 1e-4));
}

#[test]
fn views_too_short_for_their_stride_are_refused_before_the_call() {
    let Some(mkl) = mkl() else { return };
    let buf = vec![0f32; 100];
    // 10 rows 10 apart need 9 * 10 + 4 = 94 values from the offset; 8 remain short.
    let short = std::panic::catch_unwind(|| {
        let mut c = vec![0f32; 100];
        let a = View::rows(&buf[8..], 10);
        mkl.f32_strided(
            (10, 10, 4),
            a,
            View::transpose(&buf[..], 10),
            0.0,
            ViewMut {
                data: &mut c,
                ld: 10,
            },
        );
    });
    assert!(short.is_err());
    // A row stride under the row's width.
    let narrow = std::panic::catch_unwind(|| {
        let mut c = vec![0f32; 100];
        let a = View::rows(&buf[..], 3);
        mkl.f32_strided(
            (4, 4, 4),
            a,
            View::transpose(&buf[..], 10),
            0.0,
            ViewMut {
                data: &mut c,
                ld: 10,
            },
        );
    });
    assert!(narrow.is_err());
}
