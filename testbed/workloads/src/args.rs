//! Tiny `--key value` / environment parsing (no clap: the binaries must stay dependency-free).

use std::collections::HashMap;

/// Options given as `--key value` or `--key=value`; environment variables are the fallback.
#[derive(Debug, Default, Clone)]
pub struct Opts {
    flags: HashMap<String, String>,
    env: HashMap<String, String>,
}

impl Opts {
    /// Parse `args` (without argv[0]). `env` is consulted by [`Opts::get`] when a flag is absent.
    pub fn parse<I, E>(args: I, env: E) -> Result<Opts, String>
    where
        I: IntoIterator<Item = String>,
        E: IntoIterator<Item = (String, String)>,
    {
        let mut flags = HashMap::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else {
                return Err(format!(
                    "unexpected argument `{a}` (options are --key value)"
                ));
            };
            if let Some((k, v)) = key.split_once('=') {
                flags.insert(k.to_string(), v.to_string());
            } else {
                let v = it
                    .next()
                    .ok_or_else(|| format!("option --{key} needs a value"))?;
                flags.insert(key.to_string(), v);
            }
        }
        Ok(Opts {
            flags,
            env: env.into_iter().collect(),
        })
    }

    /// The flag `--key`, else the environment variable `env_key`.
    pub fn get(&self, key: &str, env_key: &str) -> Option<&str> {
        self.flags
            .get(key)
            .or_else(|| self.env.get(env_key))
            .map(String::as_str)
    }

    /// As [`Opts::get`], parsed as a number; a value that does not parse is an error, not a default.
    pub fn num<T: std::str::FromStr>(&self, key: &str, env_key: &str) -> Result<Option<T>, String> {
        match self.get(key, env_key) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("--{key} / {env_key}: `{v}` is not a valid number")),
        }
    }

    /// Flags that no caller asked for are typos; report them.
    pub fn unknown<'a>(&'a self, known: &[&str]) -> Vec<&'a str> {
        self.flags
            .keys()
            .map(String::as_str)
            .filter(|k| !known.contains(k))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn flags_then_env() {
        let o = Opts::parse(
            s(&["--port", "7001", "--x=3"]),
            [("PORT".into(), "9".into()), ("Y".into(), "4".into())],
        )
        .unwrap();
        assert_eq!(o.num::<u16>("port", "PORT").unwrap(), Some(7001));
        assert_eq!(o.num::<u32>("x", "X").unwrap(), Some(3));
        assert_eq!(o.num::<u32>("y", "Y").unwrap(), Some(4));
        assert_eq!(o.num::<u32>("z", "Z").unwrap(), None);
        assert_eq!(o.unknown(&["port"]), vec!["x"]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(Opts::parse(s(&["stray"]), []).is_err());
        assert!(Opts::parse(s(&["--port"]), []).is_err());
        let o = Opts::parse(s(&["--port", "seven"]), []).unwrap();
        assert!(o.num::<u16>("port", "PORT").unwrap_err().contains("seven"));
    }
}
