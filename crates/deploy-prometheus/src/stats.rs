//! The Mann-Whitney U test (normal approximation, tie correction, continuity correction), as the
//! judge uses it, and the normal distribution's upper tail.

/// Which difference the test looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alternative {
    /// The first sample tends to be larger.
    Greater,
    /// The first sample tends to be smaller.
    Less,
    /// Either.
    TwoSided,
}

/// The outcome of a Mann-Whitney U test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MannWhitney {
    /// U of the first sample: the number of pairs (x, y) with x > y, ties counting one half.
    pub(crate) u1: f64,
    /// The standardised statistic used for the p-value (with continuity correction).
    pub(crate) z: f64,
    /// The p-value under the chosen alternative.
    pub(crate) p: f64,
}

/// Mann-Whitney U test of `x` against `y`, with the normal approximation, the tie correction of
/// the variance and a continuity correction of 0.5: the same numbers as SciPy's
/// `mannwhitneyu(x, y, alternative=..., method="asymptotic", use_continuity=True)`.
///
/// Returns `None` when a sample is empty. When every value is tied the variance is 0 and the
/// samples cannot be told apart: p is 1.
pub(crate) fn mann_whitney(x: &[f64], y: &[f64], alternative: Alternative) -> Option<MannWhitney> {
    let (n1, n2) = (x.len(), y.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    // Midranks for ties; collect the tie sizes for the variance correction.
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let midrank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum_x += midrank * all[i..=j].iter().filter(|(_, is_x)| *is_x).count() as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let (f1, f2, fnn) = (n1 as f64, n2 as f64, n as f64);
    let u1 = rank_sum_x - f1 * (f1 + 1.0) / 2.0;
    let u2 = f1 * f2 - u1;
    let mu = f1 * f2 / 2.0;
    let var = f1 * f2 / 12.0 * ((fnn + 1.0) - tie_term / (fnn * (fnn - 1.0)));
    let (u, factor) = match alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    if var <= 0.0 {
        return Some(MannWhitney { u1, z: 0.0, p: 1.0 });
    }
    let z = (u - mu - 0.5) / var.sqrt();
    let p = (normal_sf(z) * factor).clamp(0.0, 1.0);
    Some(MannWhitney { u1, z, p })
}

/// P(Z > z) for a standard normal Z, to about 1e-14 relative accuracy (Hart's 1968 algorithm as
/// given by G. West, "Better approximations to cumulative normal functions", 2005).
pub(crate) fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    let a = z.abs();
    // The tail beyond |z| (P(Z < -|z|)).
    let tail = if a > 37.0 {
        0.0
    } else {
        let e = (-a * a / 2.0).exp();
        if a < 7.071_067_811_865_47 {
            let num = (((((0.035_262_496_599_891_1 * a + 0.700_383_064_443_688) * a
                + 6.373_962_203_531_65)
                * a
                + 33.912_866_078_383)
                * a
                + 112.079_291_497_871)
                * a
                + 221.213_596_169_931)
                * a
                + 220.206_867_912_376;
            let den = ((((((0.088_388_347_648_318_4 * a + 1.755_667_163_182_64) * a
                + 16.064_177_579_207)
                * a
                + 86.780_732_202_946_1)
                * a
                + 296.564_248_779_674)
                * a
                + 637.333_633_378_831)
                * a
                + 793.826_512_519_948)
                * a
                + 440.413_735_824_752;
            e * num / den
        } else {
            let b = a + 1.0 / (a + 2.0 / (a + 3.0 / (a + 4.0 / (a + 0.65))));
            e / b / 2.506_628_274_631
        }
    };
    if z > 0.0 { tail } else { 1.0 - tail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1e-300) || (a - b).abs() < 1e-15
    }

    // Reference values computed once with SciPy 1.17.1 (Python 3, `pip install scipy`):
    //   scipy.stats.mannwhitneyu(x, y, alternative=alt, method="asymptotic", use_continuity=True)
    //   scipy.stats.norm.sf(z)
    // for the data sets below; `statistic` is U of x.
    #[test]
    fn normal_tail_matches_scipy() {
        let table = [
            (0.0, 0.5),
            (0.5, 0.308_537_538_725_986_9),
            (1.0, 0.158_655_253_931_457_07),
            (1.96, 0.024_997_895_148_220_435),
            (2.5, 0.006_209_665_325_776_132),
            (3.0, 0.001_349_898_031_630_093_3),
            (5.0, 2.866_515_718_791_933e-7),
            (8.0, 6.220_960_574_271_74e-16),
            (-1.5, 0.933_192_798_731_141_9),
        ];
        for (z, want) in table {
            let got = normal_sf(z);
            assert!(close(got, want), "sf({z}) = {got}, scipy says {want}");
        }
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        let a_x = [1.1, 2.3, 3.5, 4.0, 5.2, 6.1, 7.7, 8.4];
        let a_y = [0.5, 1.2, 2.0, 2.2, 3.1, 3.3, 4.5, 5.0, 5.5];
        let b_x = [1., 2., 2., 3., 3., 3., 4., 5., 5., 6.];
        let b_y = [2., 3., 4., 4., 5., 6., 6., 7., 7., 8., 8., 9.];
        // C: x = [60 + i % 7 for i in range(30)], y = [20 + i % 5 for i in range(30)]
        let c_x: Vec<f64> = (0..30).map(|i| f64::from(60 + i % 7)).collect();
        let c_y: Vec<f64> = (0..30).map(|i| f64::from(20 + i % 5)).collect();
        use Alternative::*;
        // (x, y, alternative, U of x, p-value)
        type Row<'a> = (&'a [f64], &'a [f64], Alternative, f64, f64);
        let table: [Row<'_>; 9] = [
            (&a_x, &a_y, Greater, 52.0, 0.067_916_684_084_177_49),
            (&a_x, &a_y, Less, 52.0, 0.943_824_401_154_768_1),
            (&a_x, &a_y, TwoSided, 52.0, 0.135_833_368_168_354_98),
            (&b_x, &b_y, Greater, 23.5, 0.993_038_147_842_304_7),
            (&b_x, &b_y, Less, 23.5, 0.008_361_083_975_960_986),
            (&b_x, &b_y, TwoSided, 23.5, 0.016_722_167_951_921_97),
            (&c_x, &c_y, Greater, 900.0, 1.277_262_528_382_613_3e-11),
            (&c_x, &c_y, Less, 900.0, 0.999_999_999_988_457),
            (&c_x, &c_y, TwoSided, 900.0, 2.554_525_056_765_226_5e-11),
        ];
        for (x, y, alt, u, p) in table {
            let r = mann_whitney(x, y, alt).unwrap();
            assert_eq!(r.u1, u, "{alt:?}");
            assert!(close(r.p, p), "{alt:?}: p = {}, scipy says {p}", r.p);
        }
    }

    #[test]
    fn degenerate_samples() {
        assert!(mann_whitney(&[], &[1.0], Alternative::Greater).is_none());
        let r = mann_whitney(&[2.0; 5], &[2.0; 7], Alternative::TwoSided).unwrap();
        assert_eq!(r.p, 1.0);
        assert_eq!(r.u1, 17.5);
    }

    proptest! {
        #[test]
        fn u_statistics_are_complementary_and_p_is_a_probability(
            x in proptest::collection::vec(0u8..20, 1..30),
            y in proptest::collection::vec(0u8..20, 1..30),
        ) {
            let x: Vec<f64> = x.into_iter().map(f64::from).collect();
            let y: Vec<f64> = y.into_iter().map(f64::from).collect();
            let g = mann_whitney(&x, &y, Alternative::Greater).unwrap();
            let l = mann_whitney(&y, &x, Alternative::Less).unwrap();
            let n1n2 = (x.len() * y.len()) as f64;
            prop_assert!((g.u1 + l.u1 - n1n2).abs() < 1e-9);
            // "x greater than y" is "y less than x".
            prop_assert!((g.p - l.p).abs() < 1e-12);
            let t = mann_whitney(&x, &y, Alternative::TwoSided).unwrap();
            prop_assert!((0.0..=1.0).contains(&g.p) && (0.0..=1.0).contains(&t.p));
        }
    }
}
