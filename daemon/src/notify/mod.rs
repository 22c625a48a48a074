//! Stage 7: telling people. For now alerts are logged and, for interactive
//! commands, printed to stdout; pagers come in a later stage.

use crate::judge::Alert;

/// Prints a new alert as one line on stdout.
pub fn print_alert(a: &Alert) {
    println!(
        "ALERT {:<8} model={} version={} window={} detector={} feature={} statistic={:.4} p={:.3e} threshold={:.3e}",
        a.severity.as_str(),
        a.model,
        if a.model_version.is_empty() {
            "-"
        } else {
            &a.model_version
        },
        a.window_seq,
        a.detector,
        a.feature,
        a.score,
        a.p_value,
        a.threshold,
    );
}

pub fn log_alert(a: &Alert) {
    tracing::warn!(
        model = %a.model,
        version = %a.model_version,
        window = a.window_seq,
        detector = %a.detector,
        feature = %a.feature,
        severity = a.severity.as_str(),
        p_value = a.p_value,
        threshold = a.threshold,
        "alert fired"
    );
}
