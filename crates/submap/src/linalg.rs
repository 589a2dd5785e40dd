//! Small dense linear algebra on plain row-major slices, for hot loops.

/// Solves `a x = b` for a symmetric positive definite row-major `n x n` matrix by Cholesky
/// (in place); `None` when `a` is not positive definite.
#[cfg(test)]
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

/// A symmetric matrix stored by its envelope: row `i` holds columns `first[i]..=i`. Cholesky
/// factorisation keeps the envelope (no fill outside it), so a pose graph that is a chain with a
/// few loops, numbered in time order, factors in about `n · bandwidth²` operations instead of
/// `n³`.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    first: Vec<usize>,
    start: Vec<usize>,
    values: Vec<f64>,
}

impl Envelope {
    /// A zero matrix whose row `i` may be non-zero from column `first[i]` (`first[i] <= i`).
    pub(crate) fn zeros(first: Vec<usize>) -> Self {
        let mut start = Vec::with_capacity(first.len() + 1);
        let mut total = 0;
        for (i, &f) in first.iter().enumerate() {
            start.push(total);
            total += i + 1 - f.min(i);
        }
        start.push(total);
        let first = first.iter().enumerate().map(|(i, &f)| f.min(i)).collect();
        Self {
            first,
            start,
            values: vec![0.0; total],
        }
    }

    /// Order of the matrix.
    pub(crate) fn len(&self) -> usize {
        self.first.len()
    }

    /// First stored column of row `i`.
    #[cfg(test)]
    pub(crate) fn first(&self, i: usize) -> usize {
        self.first[i]
    }

    /// Adds `v` at `(i, j)` of the lower triangle (`j <= i`, `j >= first(i)`).
    pub(crate) fn add(&mut self, i: usize, j: usize, v: f64) {
        debug_assert!(
            j <= i && j >= self.first[i],
            "({i}, {j}) outside the envelope"
        );
        self.values[self.start[i] + j - self.first[i]] += v;
    }

    /// Value at `(i, j)`, `j <= i` (0 outside the envelope).
    pub(crate) fn get(&self, i: usize, j: usize) -> f64 {
        if j < self.first[i] || j > i {
            return 0.0;
        }
        self.values[self.start[i] + j - self.first[i]]
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.values[self.start[i]..self.start[i + 1]]
    }

    /// Cholesky factor `L` (same envelope) of this matrix; `None` when not positive definite.
    pub(crate) fn cholesky(&self) -> Option<Envelope> {
        let n = self.len();
        let mut l = Envelope {
            first: self.first.clone(),
            start: self.start.clone(),
            values: vec![0.0; self.values.len()],
        };
        for i in 0..n {
            let fi = self.first[i];
            for j in fi..=i {
                let fj = l.first[j];
                let k0 = fi.max(fj);
                let (ri, rj) = (l.row(i), l.row(j));
                let mut s = self.values[self.start[i] + j - fi];
                for k in k0..j {
                    s -= ri[k - fi] * rj[k - fj];
                }
                let value = if j == i {
                    if s.is_nan() || s <= 0.0 || !s.is_finite() {
                        return None;
                    }
                    s.sqrt()
                } else {
                    s / rj[j - fj]
                };
                let at = l.start[i] + j - fi;
                l.values[at] = value;
            }
        }
        Some(l)
    }

    /// Solves `L Lᵀ x = b` where `self` is the factor `L`.
    pub(crate) fn solve_factored(&self, b: &[f64]) -> Vec<f64> {
        let n = self.len();
        let mut y = b.to_vec();
        for i in 0..n {
            let fi = self.first[i];
            let row = self.row(i);
            let mut s = y[i];
            for k in fi..i {
                s -= row[k - fi] * y[k];
            }
            y[i] = s / row[i - fi];
        }
        for i in (0..n).rev() {
            let fi = self.first[i];
            let row = self.row(i);
            y[i] /= row[i - fi];
            let yi = y[i];
            for k in fi..i {
                y[k] -= row[k - fi] * yi;
            }
        }
        y
    }
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
    fn envelope_cholesky_matches_the_dense_solve() {
        // An arrow-and-band matrix: a chain with one long-range coupling, like a pose graph with
        // one loop.
        let n = 9;
        let mut dense = vec![0.0; n * n];
        let mut first: Vec<usize> = (0..n).map(|i| i.saturating_sub(2)).collect();
        first[n - 1] = 0;
        let mut env = Envelope::zeros(first);
        for i in 0..n {
            for j in env.first(i)..=i {
                let v = if i == j {
                    6.0 + i as f64
                } else {
                    0.5 + 0.1 * (i * 7 + j) as f64 % 1.0 - 0.3
                };
                env.add(i, j, v);
                dense[i * n + j] = v;
                dense[j * n + i] = v;
            }
        }
        let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.7).sin()).collect();
        let x_dense = solve_spd(&mut dense.clone(), &b, n).expect("spd");
        let x_env = env.cholesky().expect("spd").solve_factored(&b);
        for (a, e) in x_dense.iter().zip(&x_env) {
            assert!((a - e).abs() < 1e-12, "{x_dense:?} vs {x_env:?}");
        }
        assert_eq!(env.get(3, 0), 0.0, "outside the envelope");
        let mut indefinite = Envelope::zeros(vec![0, 0]);
        indefinite.add(0, 0, 1.0);
        indefinite.add(1, 0, 2.0);
        indefinite.add(1, 1, 1.0);
        assert!(indefinite.cholesky().is_none());
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
