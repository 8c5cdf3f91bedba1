//! Helpers for Prometheus text expositions.
//!
//! The `metrics` exporter prints a family only once a series of it was recorded. Istio's
//! components (prometheus-client) print `# HELP`/`# TYPE` for every registered family from the
//! first scrape, so a dashboard or alert query finds the name before the first failure or
//! denial happens: [`declare_unrecorded`] gives our expositions the same shape.

use std::fmt::Write;

/// A metric family a component always exports: name, Prometheus type, help text.
pub struct Family {
    pub name: &'static str,
    pub kind: &'static str,
    pub help: &'static str,
}

/// Appends `# HELP` and `# TYPE` for each family `text` has no `# TYPE` line for yet.
pub fn declare_unrecorded(text: &mut String, families: &[Family]) {
    for f in families {
        let declared = text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.split_whitespace().next())
                == Some(f.name)
        });
        if !declared {
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n",
                name = f.name,
                help = f.help,
                kind = f.kind
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_families_without_a_type_line_are_declared() {
        let mut text = "# HELP a_total x\n# TYPE a_total counter\na_total 1\n".to_owned();
        let families = [
            Family {
                name: "a_total",
                kind: "counter",
                help: "x",
            },
            Family {
                name: "a",
                kind: "counter",
                help: "prefix of another name",
            },
        ];
        declare_unrecorded(&mut text, &families);
        assert_eq!(
            text,
            "# HELP a_total x\n# TYPE a_total counter\na_total 1\n\
             # HELP a prefix of another name\n# TYPE a counter\n"
        );
        declare_unrecorded(&mut text, &families);
        assert_eq!(text.matches("# TYPE").count(), 2);
    }
}
