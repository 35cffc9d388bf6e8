//! What a server's URL alone tells: whether it is on this machine (a local emulator: no tokens, plain http
//! allowed), and whether it is an Azure API for FHIR service (its export searches with an inclusive `_till`).

use url::Url;

/// Whether a URL points at this machine (a local emulator: no tokens, plain http allowed).
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Whether a server URL is an Azure API for FHIR service (its export searches with an inclusive `_till`).
pub fn is_azure_api_for_fhir(url: &Url) -> bool {
    url.host_str().is_some_and(|h| {
        let h = h.to_ascii_lowercase();
        h.ends_with(".azurehealthcareapis.com") && !h.ends_with(".fhir.azurehealthcareapis.com")
    })
}
