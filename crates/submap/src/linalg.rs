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

/// `target -= lp · lqᵀ` for row-major `d x d` blocks. The pose graph's block sizes (7 for
/// Sim(3), 15 for SL(4)) are passed as constants into the inlined body, so its loops have a size
/// known at compile time, which the compiler unrolls; the Schur complement spends most of the
/// factorisation here.
fn subtract_product(target: &mut [f64], lp: &[f64], lq: &[f64], d: usize) {
    #[inline(always)]
    fn body(target: &mut [f64], lp: &[f64], lq: &[f64], d: usize) {
        let (target, lp, lq) = (&mut target[..d * d], &lp[..d * d], &lq[..d * d]);
        for r in 0..d {
            for c in 0..d {
                let mut acc = 0.0;
                for k in 0..d {
                    acc += lp[r * d + k] * lq[c * d + k];
                }
                target[r * d + c] -= acc;
            }
        }
    }
    match d {
        7 => body(target, lp, lq, 7),
        15 => body(target, lp, lq, 15),
        _ => body(target, lp, lq, d),
    }
}

/// Where the non-zero blocks of a sparse symmetric block matrix and of its Cholesky factor are:
/// the blocks (graph nodes) in elimination order and, for each, the later blocks its factor
/// column touches. The order is minimum degree (always eliminate the block with the fewest
/// remaining neighbours, ties by number), which keeps the fill of a graph that laps the same
/// places many times close to that of its separators instead of a band as wide as a lap.
#[derive(Debug, Clone)]
pub(crate) struct BlockPattern {
    dof: usize,
    /// Elimination position of each block.
    position: Vec<usize>,
    /// For each position, the later positions of its factor column, ascending.
    rows: Vec<Vec<usize>>,
    /// Start of each position's column in the values: its diagonal block, then one block per row.
    start: Vec<usize>,
}

impl BlockPattern {
    /// The pattern of `n` blocks of `dof x dof` coupled by `edges` (pairs of block numbers;
    /// self-pairs and repeats are ignored).
    pub(crate) fn new(
        n: usize,
        dof: usize,
        edges: impl IntoIterator<Item = (usize, usize)>,
    ) -> Self {
        let mut adjacent: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (a, b) in edges {
            if a != b && a < n && b < n {
                adjacent[a].push(b);
                adjacent[b].push(a);
            }
        }
        for list in &mut adjacent {
            list.sort_unstable();
            list.dedup();
        }
        let mut queue: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> = adjacent
            .iter()
            .enumerate()
            .map(|(v, list)| std::cmp::Reverse((list.len(), v)))
            .collect();
        let mut position = vec![usize::MAX; n];
        let mut eliminated_rows: Vec<Vec<usize>> = Vec::with_capacity(n);
        while let Some(std::cmp::Reverse((degree, v))) = queue.pop() {
            if position[v] != usize::MAX || degree != adjacent[v].len() {
                continue;
            }
            position[v] = eliminated_rows.len();
            let clique = std::mem::take(&mut adjacent[v]);
            // Eliminating v joins its remaining neighbours into a clique.
            for &u in &clique {
                let list = &mut adjacent[u];
                list.extend_from_slice(&clique);
                list.sort_unstable();
                list.dedup();
                list.retain(|&w| w != u && w != v);
                queue.push(std::cmp::Reverse((list.len(), u)));
            }
            eliminated_rows.push(clique);
        }
        let rows: Vec<Vec<usize>> = eliminated_rows
            .into_iter()
            .map(|list| {
                let mut p: Vec<usize> = list.iter().map(|&u| position[u]).collect();
                p.sort_unstable();
                p
            })
            .collect();
        let mut start = Vec::with_capacity(n + 1);
        let mut total = 0;
        for r in &rows {
            start.push(total);
            total += (1 + r.len()) * dof * dof;
        }
        start.push(total);
        Self {
            dof,
            position,
            rows,
            start,
        }
    }

    /// Elimination position of block `b`; scalar unknowns of `b` sit at
    /// `position(b) · dof ..`.
    pub(crate) fn position(&self, b: usize) -> usize {
        self.position[b]
    }

    /// Non-zero blocks of the factor (diagonal included).
    #[cfg(test)]
    pub(crate) fn factor_blocks(&self) -> usize {
        self.start
            .last()
            .map_or(0, |t| t / (self.dof * self.dof).max(1))
    }

    /// Offset of block (row position `i`, column position `j`), `i >= j`; `None` when the
    /// factor has no block there.
    fn block(&self, i: usize, j: usize) -> Option<usize> {
        let d2 = self.dof * self.dof;
        if i == j {
            return Some(self.start[j]);
        }
        let k = self.rows[j].binary_search(&i).ok()?;
        Some(self.start[j] + (1 + k) * d2)
    }

    /// A zero matrix with this pattern.
    pub(crate) fn zeros(&self) -> BlockSparse<'_> {
        BlockSparse {
            pattern: self,
            values: vec![0.0; *self.start.last().unwrap_or(&0)],
        }
    }
}

/// A symmetric matrix of `dof x dof` blocks on a [`BlockPattern`] (lower triangle in elimination
/// order); its Cholesky factor has the same storage.
#[derive(Debug, Clone)]
pub(crate) struct BlockSparse<'p> {
    pattern: &'p BlockPattern,
    values: Vec<f64>,
}

impl BlockSparse<'_> {
    /// Adds `v` at scalar `(i, j)` of the lower triangle (`j <= i`, indices in elimination order:
    /// `position · dof + k`). Entries outside the pattern are a caller's bug: ignored in release
    /// builds, caught in debug ones.
    pub(crate) fn add(&mut self, i: usize, j: usize, v: f64) {
        let d = self.pattern.dof;
        let (bi, bj) = (i / d, j / d);
        debug_assert!(
            bi >= bj && (bi > bj || i % d >= j % d),
            "({i}, {j}) above the diagonal"
        );
        match self.pattern.block(bi, bj) {
            Some(o) => self.values[o + (i % d) * d + j % d] += v,
            None => debug_assert!(false, "({i}, {j}) outside the pattern"),
        }
    }

    /// Adds the `dof x dof` row-major `block` to block `(bi, bj)` of the lower triangle (`bj <=
    /// bi`, positions in elimination order); one lookup for the whole block.
    pub(crate) fn add_block(&mut self, bi: usize, bj: usize, block: &[f64]) {
        let d2 = self.pattern.dof * self.pattern.dof;
        debug_assert!(
            bi >= bj && block.len() == d2,
            "block ({bi}, {bj}) above the diagonal"
        );
        match self.pattern.block(bi, bj) {
            Some(o) => {
                for (t, v) in self.values[o..o + d2].iter_mut().zip(block) {
                    *t += v;
                }
            }
            None => debug_assert!(false, "block ({bi}, {bj}) outside the pattern"),
        }
    }

    /// Diagonal entry `i`.
    pub(crate) fn diagonal(&self, i: usize) -> f64 {
        let d = self.pattern.dof;
        self.values[self.pattern.start[i / d] + (i % d) * (d + 1)]
    }

    /// Cholesky factor `L` (same pattern); `None` when not positive definite.
    pub(crate) fn cholesky(mut self) -> Option<Self> {
        let p = self.pattern;
        let d = p.dof;
        let d2 = d * d;
        let mut scratch = Vec::new();
        for j in 0..p.rows.len() {
            let s = p.start[j];
            let (head, tail) = self.values.split_at_mut(s + d2);
            let diagonal = &mut head[s..];
            cholesky_in_place(diagonal, d)?;
            let column = &mut tail[..p.rows[j].len() * d2];
            // L_ij = A_ij L_jj⁻ᵀ: each row r of the block solves L_jj x = A_ij[r, :]ᵀ.
            for block in column.chunks_exact_mut(d2) {
                for r in 0..d {
                    let row = &mut block[r * d..(r + 1) * d];
                    for c in 0..d {
                        let mut v = row[c];
                        for k in 0..c {
                            v -= diagonal[c * d + k] * row[k];
                        }
                        row[c] = v / diagonal[c * d + c];
                    }
                }
            }
            // Schur complement: A_pq -= L_pj L_qjᵀ for every pair of rows p >= q.
            let rows = &p.rows[j];
            // The factor column, copied once so the updates below can write other columns.
            scratch.clear();
            scratch.extend_from_slice(&self.values[s + d2..s + d2 + rows.len() * d2]);
            let column = &scratch;
            for (a, &rp) in rows.iter().enumerate() {
                let lp = &column[a * d2..(a + 1) * d2];
                for (b, &rq) in rows.iter().enumerate().take(a + 1) {
                    let lq = &column[b * d2..(b + 1) * d2];
                    // The elimination pattern holds every fill block; a miss is a bug, never
                    // a wrong answer.
                    let Some(o) = p.block(rp, rq) else {
                        debug_assert!(false, "fill block ({rp}, {rq}) missing");
                        return None;
                    };
                    subtract_product(&mut self.values[o..o + d2], lp, lq, d);
                }
            }
        }
        Some(self)
    }

    /// Solves `L Lᵀ x = b` where `self` is the factor `L` (`b` in elimination order).
    pub(crate) fn solve_factored(&self, b: &[f64]) -> Vec<f64> {
        let p = self.pattern;
        let d = p.dof;
        let d2 = d * d;
        let mut y = b.to_vec();
        for j in 0..p.rows.len() {
            let s = p.start[j];
            let diagonal = &self.values[s..s + d2];
            for r in 0..d {
                let mut v = y[j * d + r];
                for k in 0..r {
                    v -= diagonal[r * d + k] * y[j * d + k];
                }
                y[j * d + r] = v / diagonal[r * d + r];
            }
            for (a, &i) in p.rows[j].iter().enumerate() {
                let block = &self.values[s + (1 + a) * d2..s + (2 + a) * d2];
                for r in 0..d {
                    let v: f64 = (0..d).map(|k| block[r * d + k] * y[j * d + k]).sum();
                    y[i * d + r] -= v;
                }
            }
        }
        for j in (0..p.rows.len()).rev() {
            let s = p.start[j];
            for (a, &i) in p.rows[j].iter().enumerate() {
                let block = &self.values[s + (1 + a) * d2..s + (2 + a) * d2];
                for k in 0..d {
                    let v: f64 = (0..d).map(|r| block[r * d + k] * y[i * d + r]).sum();
                    y[j * d + k] -= v;
                }
            }
            let diagonal = &self.values[s..s + d2];
            for r in (0..d).rev() {
                let mut v = y[j * d + r];
                for k in r + 1..d {
                    v -= diagonal[k * d + r] * y[j * d + k];
                }
                y[j * d + r] = v / diagonal[r * d + r];
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

    /// A symmetric positive definite block matrix on `edges` (dense copy and sparse form).
    fn block_system(n: usize, d: usize, edges: &[(usize, usize)]) -> (Vec<f64>, BlockPattern) {
        let dim = n * d;
        let mut dense = vec![0.0; dim * dim];
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
        };
        for &(a, b) in edges {
            for r in 0..d {
                for c in 0..d {
                    let v = next();
                    dense[(a * d + r) * dim + b * d + c] += v;
                    dense[(b * d + c) * dim + a * d + r] += v;
                }
            }
        }
        for i in 0..dim {
            let off: f64 = (0..dim).map(|j| dense[i * dim + j].abs()).sum();
            dense[i * dim + i] = off + 1.0 + next().abs();
        }
        (dense, BlockPattern::new(n, d, edges.iter().copied()))
    }

    fn sparse_of<'p>(
        dense: &[f64],
        pattern: &'p BlockPattern,
        n: usize,
        d: usize,
    ) -> BlockSparse<'p> {
        let dim = n * d;
        let mut h = pattern.zeros();
        for a in 0..n {
            for b in 0..n {
                let (pa, pb) = (pattern.position(a), pattern.position(b));
                for r in 0..d {
                    for c in 0..d {
                        let (i, j) = (pa * d + r, pb * d + c);
                        let v = dense[(a * d + r) * dim + b * d + c];
                        if j <= i && v != 0.0 {
                            h.add(i, j, v);
                        }
                    }
                }
            }
        }
        h
    }

    #[test]
    fn block_cholesky_matches_the_dense_solve() {
        // A chain with loops back to its start and a cross-link: a small pose graph.
        let (n, d) = (12, 3);
        let mut edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        edges.extend([(0, 11), (2, 9), (4, 7), (3, 10)]);
        let (dense, pattern) = block_system(n, d, &edges);
        let dim = n * d;
        let b: Vec<f64> = (0..dim).map(|i| (i as f64 * 0.7).sin()).collect();
        let x_dense = solve_spd(&mut dense.clone(), &b, dim).expect("spd");
        let h = sparse_of(&dense, &pattern, n, d);
        assert!((h.diagonal(5) - dense[5 * dim + 5]).abs() < 1e-15);
        // The right-hand side in elimination order, the answer back in block order.
        let mut b_perm = vec![0.0; dim];
        for a in 0..n {
            for r in 0..d {
                b_perm[pattern.position(a) * d + r] = b[a * d + r];
            }
        }
        let x_perm = h.cholesky().expect("spd").solve_factored(&b_perm);
        for a in 0..n {
            for r in 0..d {
                let (want, got) = (x_dense[a * d + r], x_perm[pattern.position(a) * d + r]);
                assert!(
                    (want - got).abs() < 1e-12,
                    "block {a} row {r}: {want} vs {got}"
                );
            }
        }
        let mut indefinite = BlockPattern::new(2, 1, [(0, 1)]);
        let mut m = indefinite.zeros();
        let (p0, p1) = (indefinite.position(0), indefinite.position(1));
        m.add(p0, p0, 1.0);
        m.add(p1.max(p0), p1.min(p0), 2.0);
        m.add(p1, p1, 1.0);
        assert!(m.cholesky().is_none());
        indefinite = BlockPattern::new(1, 1, []);
        assert!(indefinite.zeros().cholesky().is_none(), "zero matrix");
    }

    #[test]
    fn minimum_degree_keeps_the_fill_of_a_many_lap_circuit_small() {
        // Ten laps of 40 places, each place linked to the same place on the lap before: a
        // cylinder. A band as wide as a lap would hold ~400 · 40 blocks.
        let (laps, places) = (10, 40);
        let n = laps * places;
        let mut edges: Vec<(usize, usize)> = (1..n).map(|i| (i - 1, i)).collect();
        for lap in 1..laps {
            for p in (0..places).step_by(4) {
                edges.push(((lap - 1) * places + p, lap * places + p));
            }
        }
        let pattern = BlockPattern::new(n, 1, edges.iter().copied());
        let blocks = pattern.factor_blocks();
        assert!(blocks < n * 6, "{blocks} factor blocks for {n} nodes");
        // And the factor still solves the system.
        let (dense, pattern) = block_system(n, 1, &edges);
        let b: Vec<f64> = (0..n).map(|i| (i as f64 * 0.3).cos()).collect();
        let x_dense = solve_spd(&mut dense.clone(), &b, n).expect("spd");
        let mut b_perm = vec![0.0; n];
        for a in 0..n {
            b_perm[pattern.position(a)] = b[a];
        }
        let x = sparse_of(&dense, &pattern, n, 1)
            .cholesky()
            .expect("spd")
            .solve_factored(&b_perm);
        let worst = (0..n)
            .map(|a| (x[pattern.position(a)] - x_dense[a]).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-10, "worst {worst}");
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
