//! Kubernetes resource quantities (`250m`, `1.5`, `12345n`, `128Mi`, `1G`, `1e3`) as numbers.

/// Parses a quantity into its value in base units (cores for CPU, bytes for memory).
/// Returns `None` for malformed input.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => 10f64.powi(exp[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let result = value * multiplier;
    result.is_finite().then_some(result)
}

/// CPU quantity in millicores (rounded to three decimals).
pub fn cpu_millicores(text: &str) -> Option<f64> {
    parse_quantity(text).map(|cores| (cores * 1e6).round() / 1e3)
}

/// Memory quantity in bytes (rounded down).
pub fn memory_bytes(text: &str) -> Option<u64> {
    parse_quantity(text).filter(|b| *b >= 0.0).map(|b| b.floor() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millicores("250m"), Some(250.0));
        assert_eq!(cpu_millicores("1"), Some(1000.0));
        assert_eq!(cpu_millicores("1.5"), Some(1500.0));
        assert_eq!(cpu_millicores("12345678n"), Some(12.346));
        assert_eq!(cpu_millicores("1500u"), Some(1.5));
        assert_eq!(cpu_millicores("abc"), None);
        assert_eq!(cpu_millicores(""), None);
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("128Mi"), Some(134_217_728));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("12345Ki"), Some(12_641_280));
        assert_eq!(memory_bytes("1e3"), Some(1000));
        assert_eq!(memory_bytes("100"), Some(100));
        assert_eq!(memory_bytes("5Xi"), None);
    }
}
