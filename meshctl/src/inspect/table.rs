//! Aligned text tables, as `kubectl get` and `istioctl` print them: upper-case headers, each
//! column as wide as its widest cell plus three spaces, no trailing blanks. Pure.

/// Renders `headers` and `rows` (each as long as `headers`; shorter rows are padded with
/// empty cells). Widths count characters, not bytes.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().take(columns).enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            text.push_str(cell);
            if i + 1 < columns {
                let pad = widths[i] - cell.chars().count() + GAP;
                text.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        let mut cells = row
            .iter()
            .map(String::as_str)
            .chain(std::iter::repeat(""))
            .take(columns);
        line(&mut cells);
    }
    out
}

/// Blanks between columns.
const GAP: usize = 3;

/// A list for one cell: joined with commas; `-` when empty.
pub fn list(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

/// `s` cut to `max` characters, ending in `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A list cut after `max` items: `a,b,c,+4 more`.
pub fn short_list(items: &[String], max: usize) -> String {
    if items.len() <= max {
        return list(items);
    }
    format!("{},+{} more", items[..max].join(","), items.len() - max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_blanks() {
        let rows = vec![
            vec!["apps".to_owned(), "server-1".to_owned(), "".to_owned()],
            vec!["istio-system".to_owned(), "é".to_owned(), "x".to_owned()],
            vec!["short".to_owned()],
        ];
        let text = render(&["NAMESPACE", "NAME", "LAST"], &rows);
        assert_eq!(
            text,
            "NAMESPACE      NAME       LAST\n\
             apps           server-1\n\
             istio-system   é          x\n\
             short\n"
        );
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(render(&["A", "B"], &[]), "A   B\n");
    }

    #[test]
    fn lists_and_cuts() {
        let items: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        assert_eq!(list(&[]), "-");
        assert_eq!(list(&items[..2]), "a,b");
        assert_eq!(short_list(&items, 2), "a,b,+2 more");
        assert_eq!(short_list(&items, 4), "a,b,c,d");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
