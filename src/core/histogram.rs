//! A latency histogram: exact to the microsecond below 1 ms, to the
//! millisecond up to 10 s, with everything above in one bucket.

/// Counts of durations in microseconds.
#[derive(Clone, Debug)]
pub struct Histogram {
    micros: Vec<u64>,
    millis: Vec<u64>,
    over: u64,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { micros: vec![0; 1000], millis: vec![0; 10_000], over: 0, count: 0, max: 0 }
    }
}

impl Histogram {
    /// Records one duration.
    pub fn record(&mut self, us: u64) {
        match us {
            0..1000 => self.micros[us as usize] += 1,
            1000..10_000_000 => self.millis[(us / 1000) as usize] += 1,
            _ => self.over += 1,
        }
        self.count += 1;
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The smallest recorded value at or above quantile `q` (0..=1), in µs
    /// (to the bucket's lower bound above 1 ms); 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (us, n) in self.micros.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return us as u64;
            }
        }
        for (ms, n) in self.millis.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return ms as u64 * 1000;
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        assert_eq!(h.quantile(0.5), 0);
        for us in 1..=100 {
            h.record(us);
        }
        h.record(2500);
        h.record(20_000_000);
        assert_eq!((h.count(), h.max()), (102, 20_000_000));
        assert_eq!(h.quantile(0.5), 51);
        assert_eq!(h.quantile(0.99), 2000);
        assert_eq!(h.quantile(1.0), 20_000_000);
    }
}
