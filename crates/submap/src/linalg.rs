//! Small dense linear algebra on plain row-major slices, for hot loops.

/// Solves `a x = b` for a symmetric positive definite row-major `n x n` matrix by Cholesky
/// (in place); `None` when `a` is not positive definite.
pub(crate) fn solve_spd(a: &mut [f64], b: &[f64], n: usize) -> Option<Vec<f64>> {
    cholesky_in_place(a, n)?;
    Some(solve_factored(a, b, n))
}

/// Cholesky factorisation `a = L Lᵀ` in place (lower triangle); `None` when not positive
/// definite.
pub(crate) fn cholesky_in_place(a: &mut [f64], n: usize) -> Option<()> {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d.is_nan() || d <= 0.0 || !d.is_finite() {
            return None;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
    }
    Some(())
}

/// Solves `L Lᵀ x = b` with the factor from [`cholesky_in_place`].
pub(crate) fn solve_factored(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut y = b.to_vec();
    for i in 0..n {
        for k in 0..i {
            y[i] -= a[i * n + k] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    for i in (0..n).rev() {
        for k in i + 1..n {
            y[i] -= a[k * n + i] * y[k];
        }
        y[i] /= a[i * n + i];
    }
    y
}

/// Unit eigenvector of the smallest eigenvalue of a symmetric positive semi-definite row-major
/// `n x n` matrix, by inverse iteration on a slightly shifted copy.
pub(crate) fn smallest_eigenvector(a: &[f64], n: usize) -> Option<Vec<f64>> {
    let trace: f64 = (0..n).map(|i| a[i * n + i]).sum();
    if trace.is_nan() || trace <= 0.0 || !trace.is_finite() {
        return None;
    }
    let mut m = a.to_vec();
    for i in 0..n {
        m[i * n + i] += 1e-13 * trace;
    }
    cholesky_in_place(&mut m, n)?;
    // A start vector with no special structure, so it is never orthogonal to the answer.
    let mut x: Vec<f64> = (0..n).map(|i| 1.0 + 0.1 * i as f64).collect();
    for _ in 0..40 {
        let y = solve_factored(&m, &x, n);
        let norm = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm.is_nan() || norm <= 0.0 || !norm.is_finite() {
            return None;
        }
        let next: Vec<f64> = y.iter().map(|v| v / norm).collect();
        let change = next
            .iter()
            .zip(&x)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        x = next;
        if change < 1e-14 {
            break;
        }
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solves_spd_system() {
        let a = [4.0, 1.0, 0.5, 1.0, 3.0, 0.2, 0.5, 0.2, 2.0];
        let x_true = [1.0, -2.0, 0.5];
        let b: Vec<f64> = (0..3)
            .map(|r| (0..3).map(|c| a[r * 3 + c] * x_true[c]).sum())
            .collect();
        let x = solve_spd(&mut a.to_vec(), &b, 3).expect("spd");
        assert!(
            x.iter().zip(&x_true).all(|(a, b)| (a - b).abs() < 1e-12),
            "{x:?}"
        );
        assert!(
            solve_spd(&mut [1.0, 2.0, 2.0, 1.0], &[1.0, 1.0], 2).is_none(),
            "indefinite"
        );
    }

    #[test]
    fn smallest_eigenvector_of_rank_deficient_matrix() {
        // A = I - v vᵀ / |v|² has eigenvalue 0 along v.
        let v = [1.0, 2.0, -1.0, 0.5];
        let n2: f64 = v.iter().map(|x| x * x).sum();
        let a: Vec<f64> = (0..16)
            .map(|k| f64::from(u8::from(k / 4 == k % 4)) - v[k / 4] * v[k % 4] / n2)
            .collect();
        let e = smallest_eigenvector(&a, 4).expect("psd");
        let cos = e.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>() / n2.sqrt();
        assert!((cos.abs() - 1.0).abs() < 1e-9, "cos {cos}");
    }
}
