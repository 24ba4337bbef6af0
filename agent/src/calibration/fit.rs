//! Ordinary least squares for the linear laws of the PAM model (time = a + b·M).

use thiserror::Error;

/// A line fitted to points, with how well it fits.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearFit {
    /// a: the value at x = 0.
    pub intercept: f64,
    /// b: the increase per unit of x.
    pub slope: f64,
    /// Coefficient of determination: 1 = every point on the line, ≤ 0 = no better than the mean.
    pub r_squared: f64,
    /// y − ŷ per point, in input order.
    pub residuals: Vec<f64>,
    /// Root-mean-square residual over the mean |y|: how far off the line's predictions are.
    /// A law that barely depends on x has a low R² even when this is small (R² is the slope's
    /// share of the variance, not the prediction's error).
    pub relative_error: f64,
}

/// Why no line could be fitted.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FitError {
    /// A line needs at least two distinct x values.
    #[error("{law}: need points at {needed} distinct x values, got {got}")]
    TooFewPoints {
        /// The law being fitted.
        law: &'static str,
        /// Distinct x values needed.
        needed: usize,
        /// Distinct x values given.
        got: usize,
    },
    /// A point is NaN or infinite.
    #[error("{law}: point ({x}, {y}) is not a finite number")]
    NotFinite {
        /// The law being fitted.
        law: &'static str,
        /// The point's x.
        x: f64,
        /// The point's y.
        y: f64,
    },
}

/// Fits `y = intercept + slope·x` to `points` (at least 2 distinct x).
pub fn fit_line(law: &'static str, points: &[(f64, f64)]) -> Result<LinearFit, FitError> {
    if let Some(&(x, y)) = points
        .iter()
        .find(|(x, y)| !x.is_finite() || !y.is_finite())
    {
        return Err(FitError::NotFinite { law, x, y });
    }
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    if xs.len() < 2 {
        return Err(FitError::TooFewPoints {
            law,
            needed: 2,
            got: xs.len(),
        });
    }
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
    let slope = sxy / sxx;
    let intercept = mean_y - slope * mean_x;
    let residuals: Vec<f64> = points
        .iter()
        .map(|p| p.1 - (intercept + slope * p.0))
        .collect();
    let ss_res: f64 = residuals.iter().map(|r| r * r).sum();
    let ss_tot: f64 = points.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
    // All y equal: a flat line fits them exactly.
    let r_squared = if ss_tot == 0.0 {
        1.0
    } else {
        1.0 - ss_res / ss_tot
    };
    let mean_abs_y = points.iter().map(|p| p.1.abs()).sum::<f64>() / n;
    let relative_error = match (ss_res, mean_abs_y) {
        (0.0, _) => 0.0,
        (_, 0.0) => f64::INFINITY,
        (ss, m) => (ss / n).sqrt() / m,
    };
    Ok(LinearFit {
        intercept,
        slope,
        r_squared,
        residuals,
        relative_error,
    })
}

/// The median of `values` (`None` when empty).
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_line_is_recovered() {
        let pts: Vec<(f64, f64)> = (1..=5).map(|x| (x as f64, 0.5 + 2.0 * x as f64)).collect();
        let f = fit_line("t", &pts).unwrap();
        assert!((f.intercept - 0.5).abs() < 1e-12);
        assert!((f.slope - 2.0).abs() < 1e-12);
        assert!((f.r_squared - 1.0).abs() < 1e-12);
        assert!(f.residuals.iter().all(|r| r.abs() < 1e-12));
        assert_eq!(f.relative_error, 0.0);
    }

    #[test]
    fn a_flat_law_has_a_low_r_squared_but_a_small_relative_error() {
        // CRIU restore times measured in the VM guests: ≈1.7 s whatever the size.
        let pts = [
            (4.0, 1.60),
            (16.0, 1.98),
            (32.0, 1.91),
            (4.0, 1.43),
            (16.0, 1.65),
            (32.0, 1.88),
        ];
        let f = fit_line("t", &pts).unwrap();
        assert!(f.r_squared < 0.8, "{}", f.r_squared);
        assert!(f.relative_error < 0.15, "{}", f.relative_error);
    }

    #[test]
    fn noise_lowers_r_squared_and_degenerate_input_is_an_error() {
        let noisy = [(1.0, 1.0), (2.0, 5.0), (3.0, 2.0), (4.0, 6.0), (5.0, 1.0)];
        let f = fit_line("t", &noisy).unwrap();
        assert!(f.r_squared < 0.5 && f.relative_error > 0.5, "{f:?}");
        assert_eq!(
            fit_line("t", &[(1.0, 1.0), (1.0, 2.0)]),
            Err(FitError::TooFewPoints {
                law: "t",
                needed: 2,
                got: 1
            })
        );
        assert!(matches!(
            fit_line("t", &[(1.0, f64::NAN), (2.0, 1.0)]),
            Err(FitError::NotFinite { .. })
        ));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    proptest! {
        #[test]
        fn residuals_sum_to_zero_and_r2_at_most_one(
            pts in proptest::collection::vec((0.0f64..1e9, -1e3f64..1e3), 3..30)
        ) {
            if let Ok(f) = fit_line("p", &pts) {
                let sum: f64 = f.residuals.iter().sum();
                let scale = pts.iter().map(|p| p.1.abs()).fold(1.0, f64::max) * pts.len() as f64;
                prop_assert!(sum.abs() <= 1e-6 * scale);
                prop_assert!(f.r_squared <= 1.0 + 1e-9);
            }
        }
    }
}
