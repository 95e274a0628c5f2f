//! The settings spelled back as a config file for `check-config`, each line commented with
//! where its value came from.

use super::Settings;

impl Settings {
    /// The settings as a config file that `--config` reads back, in the order of `--help`,
    /// each line commented with where its value came from.
    pub fn to_toml(&self) -> String {
        let set = toml::Table::try_from(self).unwrap_or_default();
        let all = self.values();
        let flags = Self::flags();
        let keys = std::iter::once("command".to_string()).chain(
            flags
                .get_arguments()
                .map(|arg| arg.get_id().as_str().replace('_', "-")),
        );
        let mut out = String::new();
        for key in keys.filter(|key| all.contains_key(key) && key != "env") {
            let line = match set.get(&key) {
                Some(value) => format!("{key} = {value}"),
                None => format!("# {key} is not set"),
            };
            out.push_str(&format!("{line:<48} # {}\n", self.source(&key)));
        }
        if let Some(env) = set
            .get("env")
            .filter(|env| env.as_table().is_some_and(|t| !t.is_empty()))
        {
            let table = toml::Table::from_iter([("env".to_string(), env.clone())]);
            out.push('\n');
            out.push_str(&toml::to_string(&table).unwrap_or_default());
        }
        out
    }
}
