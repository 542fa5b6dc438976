#![doc = include_str!("../README.md")]

mod maintenance;
mod nginx;
mod upstream;

pub use maintenance::{
    MAINTENANCE_MARKER, MaintenancePage, MaintenancePageBuilder, MaintenancePageConfig,
    MaintenanceSnippet, PageCheck, RenderedSnippet,
};
pub use nginx::{Nginx, Reload};
pub use upstream::{StickyConfig, UpstreamSwitch, UpstreamSwitchBuilder, UpstreamSwitchConfig};

/// The `kind` of this crate's plan-file sections: `[switch]` ([`UpstreamSwitchConfig`]) and
/// `[maintenance]` ([`MaintenancePageConfig`]).
pub const KIND: &str = "nginx";

#[cfg(feature = "testing")]
pub mod testing;

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan-file example in the README, section by section, as the facade reads it: `kind`
    /// names this crate and is removed, the rest builds.
    #[test]
    fn the_readme_plan_file_sections_parse_and_build() {
        let readme = include_str!("../README.md");
        let start = readme.find("## From a plan file").unwrap();
        let block = &readme[start..];
        let block = &block[block.find("```toml\n").unwrap() + 8..];
        let block = &block[..block.find("```").unwrap()];
        let plan: toml::Table = toml::from_str(block).unwrap();
        let section = |name: &str| {
            let mut s = plan[name].as_table().unwrap().clone();
            assert_eq!(s.remove("kind").unwrap().as_str(), Some(KIND));
            s
        };
        let switch: UpstreamSwitchConfig = section("switch").try_into().unwrap();
        let switch = UpstreamSwitch::from_config(switch).unwrap();
        assert_eq!(switch.targets().count(), 2);
        let page: MaintenancePageConfig = section("maintenance").try_into().unwrap();
        let page = MaintenancePage::from_config(page).unwrap();
        assert_eq!(page.flag().to_str(), Some("/srv/app/shared/maintenance.on"));
        assert_eq!(
            page.page_check(),
            &PageCheck::File("/srv/app/static/maintenance.html".into())
        );
    }
}
