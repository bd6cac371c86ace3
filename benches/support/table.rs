//! The figures table printed by `cargo bench --bench all` and `--bench scale`.

pub struct Row {
    pub figure: String,
    pub value: String,
    pub target: String,
    /// Against a baseline or bound measured in the same run, if the figure has one.
    pub ratio: String,
    pub met: String,
}

/// `met`: whether the target is met (None: no target).
pub fn row(
    figure: &str,
    value: String,
    target: &str,
    ratio: Option<String>,
    met: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        value,
        target: target.into(),
        ratio: ratio.unwrap_or_else(|| "-".into()),
        met: match met {
            Some(true) => "yes".into(),
            Some(false) => "NO".into(),
            None => "-".into(),
        },
    }
}

/// A Markdown table, columns padded.
pub fn print(rows: &[Row]) {
    let cells = |r: &Row| {
        [
            r.figure.clone(),
            r.value.clone(),
            r.target.clone(),
            r.ratio.clone(),
            r.met.clone(),
        ]
    };
    let head = ["figure", "value", "target", "ratio", "met"].map(String::from);
    let mut w = head.clone().map(|h| h.chars().count());
    for r in rows {
        for (i, c) in cells(r).iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |c: &[String; 5]| {
        let mut s = String::from("|");
        for (i, v) in c.iter().enumerate() {
            let pad = w[i] - v.chars().count();
            if i == 1 || i == 3 {
                s.push_str(&format!(" {}{v} |", " ".repeat(pad)));
            } else {
                s.push_str(&format!(" {v}{} |", " ".repeat(pad)));
            }
        }
        s
    };
    println!("{}", line(&head));
    let mut sep = String::from("|");
    for wi in w {
        sep.push_str(&"-".repeat(wi + 2));
        sep.push('|');
    }
    println!("{sep}");
    for r in rows {
        println!("{}", line(&cells(r)));
    }
}
