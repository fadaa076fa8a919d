//! Several rounds of the same figures, reduced to one figure each. The figure kept is the
//! median round's own, so the floor and the verdict printed beside a value are those it
//! was measured with; every round's value is kept with it to show the spread.

use crate::Figure;

/// Per figure name, in the order first seen: the median round's figure, ranked by its
/// ratio to its floor where it has one, with every round's value.
pub fn medians(rounds: Vec<Vec<Figure>>) -> Vec<Figure> {
    let mut by_name: Vec<Vec<Figure>> = Vec::new();
    for figure in rounds.into_iter().flatten() {
        match by_name.iter_mut().find(|g| g[0].name == figure.name) {
            Some(group) => group.push(figure),
            None => by_name.push(vec![figure]),
        }
    }
    by_name.into_iter().map(median).collect()
}

/// The spread of a figure's rounds, (highest - lowest) / the median of their values
/// (the printed round is the median by ratio to its floor, which may be another);
/// None for one round.
pub fn spread(figure: &Figure) -> Option<f64> {
    let rounds = &figure.rounds;
    let middle = rounds.get(rounds.len() / 2)?;
    match (rounds.first(), rounds.last()) {
        (Some(low), Some(high)) if rounds.len() > 1 && *middle != 0.0 => {
            Some((high - low) / middle.abs())
        }
        _ => None,
    }
}

fn median(mut group: Vec<Figure>) -> Figure {
    let mut values: Vec<f64> = group.iter().map(|f| f.value).collect();
    values.sort_by(f64::total_cmp);
    group.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let mut chosen = group.swap_remove((group.len() - 1) / 2);
    chosen.rounds = values;
    chosen
}

fn ratio(figure: &Figure) -> f64 {
    figure
        .floor
        .map_or(figure.value, |floor| figure.value / floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figure;

    fn measured(value: f64, floor: f64) -> Figure {
        Figure {
            floor: Some(floor),
            met: Some(value <= 1.5 * floor),
            ..figure("latency", value, "us")
        }
    }

    #[test]
    fn the_median_round_is_kept_with_its_own_floor_and_verdict() {
        // By value the median is 130; by ratio to the floor it is 150 / 100.
        let rounds = vec![
            vec![measured(130.0, 50.0), figure("rate", 3.0, "/s")],
            vec![measured(150.0, 100.0), figure("rate", 1.0, "/s")],
            vec![measured(100.0, 200.0), figure("rate", 2.0, "/s")],
        ];
        let got = medians(rounds);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].value, got[0].floor, got[0].met),
            (150.0, Some(100.0), Some(true))
        );
        assert_eq!(got[0].rounds, vec![100.0, 130.0, 150.0]);
        assert_eq!((got[1].name.as_str(), got[1].value), ("rate", 2.0));
        assert_eq!(spread(&got[1]), Some(1.0));
        // Over the median value (130), not the printed round's (150): stop 57.
        assert_eq!(spread(&got[0]), Some(50.0 / 130.0));
    }

    #[test]
    fn one_round_has_no_spread() {
        let got = medians(vec![vec![figure("rate", 3.0, "/s")]]);
        assert_eq!((got[0].value, spread(&got[0])), (3.0, None));
    }
}
