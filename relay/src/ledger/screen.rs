//! The screen's history in the ledger: series of figures of accepted results (norms,
//! replay projections) and the hashes and sketches of screened Δs, so that a restarted
//! relay screens by the same scale (see `coordinator::screen`).

use rusqlite::params;

use super::Ledger;

/// A screened Δ as the ledger keeps it.
pub struct ScreenedDelta {
    /// Its unit.
    pub unit: u64,
    /// blake3 of its values.
    pub hash: [u8; 32],
    /// Its sketch's bucket sums.
    pub sketch: Vec<f32>,
}

impl Ledger {
    /// The last `limit` values the screen recorded in series `series`, oldest first.
    pub fn screen_values(&self, series: u8, limit: usize) -> anyhow::Result<Vec<f32>> {
        let mut stmt =
            self.db.prepare_cached("SELECT value FROM screen_values WHERE series = ?1 ORDER BY id DESC LIMIT ?2")?;
        let rows = stmt.query_map(params![series, limit as i64], |r| r.get::<_, f64>(0))?;
        let mut values: Vec<f32> = rows.map(|v| v.map(|v| v as f32)).collect::<Result<_, _>>()?;
        values.reverse();
        Ok(values)
    }

    /// Appends a value to the screen's series `series`.
    pub fn add_screen_value(&self, series: u8, value: f32) -> anyhow::Result<()> {
        let mut stmt = self.db.prepare_cached("INSERT INTO screen_values (series, value) VALUES (?1, ?2)")?;
        stmt.execute(params![series, value as f64])?;
        Ok(())
    }

    /// The last `limit` screened Δs, oldest first.
    pub fn screen_deltas(&self, limit: usize) -> anyhow::Result<Vec<ScreenedDelta>> {
        let mut stmt =
            self.db.prepare_cached("SELECT unit, hash, sketch FROM screen_deltas ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?, r.get::<_, Vec<u8>>(2)?))
        })?;
        let mut deltas = Vec::new();
        for row in rows {
            let (unit, hash, sketch) = row?;
            let Ok(hash) = <[u8; 32]>::try_from(hash.as_slice()) else { continue };
            let sketch = sketch.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            deltas.push(ScreenedDelta { unit, hash, sketch });
        }
        deltas.reverse();
        Ok(deltas)
    }

    /// Appends a screened Δ's hash and sketch to the screen's history.
    pub fn add_screen_delta(&self, unit: u64, hash: &[u8; 32], sketch: &[f32]) -> anyhow::Result<()> {
        let sketch: Vec<u8> = sketch.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut stmt = self.db.prepare_cached("INSERT INTO screen_deltas (unit, hash, sketch) VALUES (?1, ?2, ?3)")?;
        stmt.execute(params![unit as i64, &hash[..], sketch])?;
        Ok(())
    }

    /// Keeps the newest `values` values of each series and `deltas` screened Δs.
    pub fn prune_screen(&self, values: usize, deltas: usize) -> anyhow::Result<()> {
        self.db.execute(
            "DELETE FROM screen_values WHERE id NOT IN (SELECT id FROM
                 (SELECT id, ROW_NUMBER() OVER (PARTITION BY series ORDER BY id DESC) AS newer FROM screen_values)
                 WHERE newer <= ?1)",
            [values as i64],
        )?;
        self.db.execute(
            "DELETE FROM screen_deltas WHERE id < (SELECT COALESCE(MIN(id), 0) FROM
                 (SELECT id FROM screen_deltas ORDER BY id DESC LIMIT ?1))",
            [deltas as i64],
        )?;
        Ok(())
    }
}
