//! The bandwidth flags (`--max-bps-*`) and their values: bits per second, with an optional
//! decimal suffix (k = 1 000, M = 1 000 000, G = 1 000 000 000).

use crate::core::BandwidthLimits;

#[derive(Debug, clap::Args)]
// The bandwidth flags (not a doc comment: clap would make it the help text).
#[allow(missing_docs)]
pub struct BandwidthArgs {
    /// Relayed bits per second per allocation, both directions together (payload bytes; e.g.
    /// 2500000, 2500k, 2.5M); beyond it datagrams are dropped [default: unlimited].
    #[arg(long, env = "RELAY_MAX_BPS_PER_ALLOCATION", value_name = "BPS", value_parser = parse_bits_per_second)]
    pub max_bps_per_allocation: Option<u64>,

    /// Relayed bits per second per user (the `<id>` of `<expiry>:<id>`), all their
    /// allocations and both directions together [default: unlimited].
    #[arg(long, env = "RELAY_MAX_BPS_PER_USER", value_name = "BPS", value_parser = parse_bits_per_second)]
    pub max_bps_per_user: Option<u64>,

    /// Relayed bits per second of the whole relay, both directions together [default: unlimited].
    #[arg(long, env = "RELAY_MAX_BPS_TOTAL", value_name = "BPS", value_parser = parse_bits_per_second)]
    pub max_bps_total: Option<u64>,
}

impl BandwidthArgs {
    /// The core's limits.
    pub fn limits(&self) -> BandwidthLimits {
        BandwidthLimits {
            per_allocation: self.max_bps_per_allocation,
            per_user: self.max_bps_per_user,
            total: self.max_bps_total,
        }
    }
}

/// `2500000`, `2500k`, `2.5M`, `1G` (decimal: k is 1000): bits per second, at least 1 and
/// at most 10^15 (a petabit, far past any NIC; it keeps the arithmetic exact).
pub fn parse_bits_per_second(text: &str) -> Result<u64, String> {
    const MAX: u64 = 1_000_000_000_000_000;
    let usage =
        || format!("'{text}' is not a rate: bits per second, like 2500000, 2500k, 2.5M or 1G");
    let (number, scale) = match text.trim().char_indices().last() {
        Some((at, 'k' | 'K')) => (&text.trim()[..at], 1_000),
        Some((at, 'M')) => (&text.trim()[..at], 1_000_000),
        Some((at, 'G')) => (&text.trim()[..at], 1_000_000_000),
        _ => (text.trim(), 1),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return Err(usage());
    }
    let whole: u64 = whole.parse().map_err(|_| usage())?;
    let bits = u128::from(whole) * scale
        + if fraction.is_empty() {
            0
        } else {
            // `fraction` has at most 9 digits: 0.d1d2… × scale, rounded down.
            let value: u128 = fraction.parse().map_err(|_| usage())?;
            value * scale / 10u128.pow(fraction.len() as u32)
        };
    if bits == 0 {
        return Err("must be at least 1 bit per second (leave the flag out for no limit)".into());
    }
    u64::try_from(bits)
        .ok()
        .filter(|bits| *bits <= MAX)
        .ok_or_else(|| format!("'{text}' is more than 1000000G bits per second"))
}

#[cfg(test)]
mod tests {
    use super::parse_bits_per_second as parse;

    #[test]
    fn rates_with_and_without_suffixes() {
        assert_eq!(parse("1"), Ok(1));
        assert_eq!(parse("2500000"), Ok(2_500_000));
        assert_eq!(parse("2500k"), Ok(2_500_000));
        assert_eq!(parse("2500K"), Ok(2_500_000));
        assert_eq!(parse("2.5M"), Ok(2_500_000));
        assert_eq!(parse("1G"), Ok(1_000_000_000));
        assert_eq!(parse("0.001k"), Ok(1));
        assert_eq!(parse("1000000G"), Ok(1_000_000_000_000_000));
    }

    #[test]
    fn bad_rates_are_refused() {
        for bad in [
            "",
            "k",
            "M",
            "-1",
            "1.5.2M",
            "1e6",
            "1 M",
            "1m",
            "1T",
            "ten",
            ".5M",
            "0x10",
            "1.0000000001G",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse("0").unwrap_err().contains("at least 1"));
        assert!(parse("0.0001k").unwrap_err().contains("at least 1"));
        assert!(parse("1000001G").unwrap_err().contains("more than"));
        assert!(parse("99999999999999999999999").is_err());
    }
}
