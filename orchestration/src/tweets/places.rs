//! The places generated tweets come from: real cities with their populations (thousands,
//! rounded) and coordinates, as Twitter names them (`place.name`, `place.full_name`).
//!
//! Some names exist in several countries on purpose (London ON, Birmingham AL, Cambridge MA,
//! Perth WA): a per-city count must filter on `country_code`, never on the name.

pub struct Country {
    pub code: &'static str,
    pub name: &'static str,
    /// The share of placed tweets from this country, in per mille.
    pub share: u32,
    /// The language most of its tweets are in.
    pub lang: &'static str,
    pub cities: &'static [City],
}

pub struct City {
    pub name: &'static str,
    /// What follows `name, ` in `full_name`: the nation, region or state.
    pub region: &'static str,
    /// Population in thousands: the city's weight within its country.
    pub population: u32,
    pub lat: f64,
    pub lon: f64,
}

const fn city(
    name: &'static str,
    region: &'static str,
    population: u32,
    lat: f64,
    lon: f64,
) -> City {
    City {
        name,
        region,
        population,
        lat,
        lon,
    }
}

pub const COUNTRIES: &[Country] = &[
    Country {
        code: "GB",
        name: "United Kingdom",
        share: 520,
        lang: "en",
        cities: &[
            city("London", "England", 8_982, 51.5074, -0.1278),
            city("Birmingham", "England", 1_149, 52.4862, -1.8904),
            city("Leeds", "England", 793, 53.8008, -1.5491),
            city("Glasgow", "Scotland", 635, 55.8642, -4.2518),
            city("Sheffield", "England", 584, 53.3811, -1.4701),
            city("Manchester", "England", 553, 53.4808, -2.2426),
            city("Edinburgh", "Scotland", 527, 55.9533, -3.1883),
            city("Liverpool", "England", 498, 53.4084, -2.9916),
            city("Bristol", "England", 467, 51.4545, -2.5879),
            city("Coventry", "England", 371, 52.4068, -1.5197),
            city("Cardiff", "Wales", 364, 51.4816, -3.1791),
            city("Leicester", "England", 355, 52.6369, -1.1398),
            city("Bradford", "England", 349, 53.7960, -1.7594),
            city("Belfast", "Northern Ireland", 343, 54.5973, -5.9301),
            city("Nottingham", "England", 332, 52.9548, -1.1581),
            city("Newcastle upon Tyne", "England", 302, 54.9783, -1.6178),
            city("Brighton", "England", 290, 50.8225, -0.1372),
            city("Plymouth", "England", 264, 50.3755, -4.1427),
            city("Wolverhampton", "England", 263, 52.5870, -2.1288),
            city("Kingston upon Hull", "England", 260, 53.7457, -0.3367),
            city("Derby", "England", 257, 52.9225, -1.4746),
            city("Stoke-on-Trent", "England", 256, 53.0027, -2.1794),
            city("Southampton", "England", 253, 50.9097, -1.4044),
            city("Swansea", "Wales", 246, 51.6214, -3.9436),
            city("Portsmouth", "England", 238, 50.8198, -1.0880),
            city("Milton Keynes", "England", 229, 52.0406, -0.7594),
            city("York", "England", 210, 53.9600, -1.0873),
            city("Aberdeen", "Scotland", 198, 57.1497, -2.0943),
            city("Reading", "England", 174, 51.4543, -0.9781),
            city("Sunderland", "England", 174, 54.9069, -1.3838),
            city("Oxford", "England", 152, 51.7520, -1.2577),
            city("Dundee", "Scotland", 149, 56.4620, -2.9707),
            city("Cambridge", "England", 145, 52.2053, 0.1218),
            city("Norwich", "England", 142, 52.6309, 1.2974),
            city("Preston", "England", 141, 53.7632, -2.7031),
            city("Exeter", "England", 131, 50.7184, -3.5339),
            city("Lincoln", "England", 100, 53.2307, -0.5406),
            city("Bath", "England", 94, 51.3811, -2.3590),
            city("Derry", "Northern Ireland", 85, 54.9966, -7.3086),
            city("Inverness", "Scotland", 47, 57.4778, -4.2247),
        ],
    },
    Country {
        code: "US",
        name: "United States",
        share: 170,
        lang: "en",
        cities: &[
            city("Los Angeles", "CA", 3_990, 34.0522, -118.2437),
            city("Chicago", "IL", 2_706, 41.8781, -87.6298),
            city("Houston", "TX", 2_325, 29.7604, -95.3698),
            city("Seattle", "WA", 745, 47.6062, -122.3321),
            city("Boston", "MA", 685, 42.3601, -71.0589),
            city("Birmingham", "AL", 210, 33.5186, -86.8104),
            city("Cambridge", "MA", 118, 42.3736, -71.1097),
            city("Chico", "CA", 92, 39.7285, -121.8375),
        ],
    },
    Country {
        code: "IE",
        name: "Ireland",
        share: 70,
        lang: "en",
        cities: &[
            city("Dublin City", "Ireland", 554, 53.3498, -6.2603),
            city("Cork", "Ireland", 210, 51.8985, -8.4756),
            city("Limerick", "Ireland", 94, 52.6638, -8.6267),
            city("Galway", "Ireland", 80, 53.2707, -9.0568),
        ],
    },
    Country {
        code: "FR",
        name: "France",
        share: 60,
        lang: "fr",
        cities: &[
            city("Paris", "France", 2_148, 48.8566, 2.3522),
            city("Marseille", "France", 861, 43.2965, 5.3698),
            city("Lyon", "France", 516, 45.7640, 4.8357),
        ],
    },
    Country {
        code: "CA",
        name: "Canada",
        share: 40,
        lang: "en",
        cities: &[
            city("Toronto", "Ontario", 2_930, 43.6532, -79.3832),
            city("London", "Ontario", 384, 42.9849, -81.2453),
        ],
    },
    Country {
        code: "AU",
        name: "Australia",
        share: 40,
        lang: "en",
        cities: &[
            city("Sydney", "New South Wales", 5_230, -33.8688, 151.2093),
            city("Perth", "Western Australia", 2_060, -31.9505, 115.8605),
        ],
    },
    Country {
        code: "DE",
        name: "Germany",
        share: 40,
        lang: "de",
        cities: &[
            city("Berlin", "Deutschland", 3_645, 52.5200, 13.4050),
            city("München", "Bayern", 1_472, 48.1351, 11.5820),
        ],
    },
    Country {
        code: "ES",
        name: "Spain",
        share: 30,
        lang: "es",
        cities: &[city("Madrid", "España", 3_223, 40.4168, -3.7038)],
    },
    Country {
        code: "IN",
        name: "India",
        share: 30,
        lang: "en",
        cities: &[city("Mumbai", "India", 12_442, 19.0760, 72.8777)],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_every_country_has_cities() {
        assert_eq!(COUNTRIES.iter().map(|c| c.share).sum::<u32>(), 1000);
        for c in COUNTRIES {
            assert!(!c.cities.is_empty() && c.code.len() == 2, "{}", c.code);
            for city in c.cities {
                assert!(city.population > 0 && city.lat.abs() < 90.0 && city.lon.abs() < 180.0);
            }
        }
    }
}
